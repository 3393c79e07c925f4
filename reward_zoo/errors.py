"""The errors reward_zoo raises. Kept apart from the scorer contract so that the registry (and the
`mogen rewards` command line) can be imported without torch."""

from __future__ import annotations


class ScorerError(RuntimeError):
    """A scorer could not run at all (as opposed to failing on some samples)."""


class ScorerConfigError(ValueError):
    """Unknown scorer name, bad keyword argument or bad value; the message names what to fix."""


class MissingWeightsError(FileNotFoundError):
    """A model-backed scorer's weights are not on this machine (nothing is downloaded at run time)."""

    def __init__(self, scorer: str, what: str, where: str, how: str):
        self.scorer, self.what, self.where = scorer, what, where
        super().__init__(
            f"reward '{scorer}': {what} not found at {where}.\n"
            f"How to get it: {how}\n"
            "reward_zoo never downloads weights at run time; pass a local path in the reward's kwargs "
            "(see `mogen rewards list`)."
        )
