"""The toy world's rule-based verifier (`mogen.toyworld.verify`) as a reward_zoo scorer named `toy_verifier`.

It lives in mogen because it needs the toy world; reward_zoo never imports mogen. mogen registers it with
reward_zoo's registry when imported (mogen/__init__.py) and declares it as a `mogen.rewards` entry point
(pyproject.toml), so `reward_zoo.get("toy_verifier")` finds it once mogen is imported or installed.

One verifier can feed several objectives: `attribute` picks `overall` (mean of the attributes the
prompt has), `all_correct` (GenEval's strict 0/1) or one of count / color / shape / position / text.
An attribute a prompt does not have (e.g. `text` for "two red circles") scores `not_applicable`
(default 0.0) rather than failing: every sample of a prompt group then gets the same value, so that
objective's group-normalized advantage is 0 there and the other objectives still train on the group.
`details` carries every attribute (NaN where not applicable) and an `applicable` 0/1 mask for logging.
"""

from __future__ import annotations

from typing import Any

import torch

from mogen.toyworld.verify import verify
from reward_zoo import Scorer, ScoreResult, ScorerConfigError

_ATTRIBUTES = ("overall", "all_correct", "count", "color", "shape", "position", "text")


class ToyVerifier(Scorer):
    name = "toy_verifier"
    description = "toy-world verifier (mogen.toyworld): overall or one attribute, from pixels"

    def __init__(self, attribute: str = "overall", not_applicable: float = 0.0, batch_size: int | None = None):
        super().__init__(batch_size)
        if attribute not in _ATTRIBUTES:
            raise ScorerConfigError(
                f"reward 'toy_verifier': attribute must be one of {', '.join(_ATTRIBUTES)}, got {attribute!r}"
            )
        if not isinstance(not_applicable, (int, float)):
            raise ScorerConfigError(f"reward 'toy_verifier': not_applicable must be a number, got {not_applicable!r}")
        self.attribute, self.not_applicable = attribute, float(not_applicable)

    @classmethod
    def weights_status(cls, **_: Any) -> tuple[bool, str]:
        return True, "no weights (the text attribute runs tesseract)"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        table = verify(images, prompts)  # raises ValueError on a prompt outside the grammar
        values = table[self.attribute]
        applicable = ~torch.isnan(values)
        scores = torch.where(applicable, values, torch.full_like(values, self.not_applicable))
        details = {k: v for k, v in table.items() if k != self.attribute}
        details["applicable"] = applicable.float()
        return ScoreResult(scores, details=details)
