"""A third-party reward package used by tests/test_reward_zoo.py to exercise the `mogen.rewards` entry points.

The sibling `mogen_test_rewards-0.1.dist-info` makes this folder look like an installed distribution once it
is on sys.path, which is all `importlib.metadata` needs.
"""

import torch

from reward_zoo import Scorer


class MeanBrightness(Scorer):
    """Mean pixel value, times `gain`."""

    name = "mean_brightness"
    description = "mean pixel value (test plugin)"

    def __init__(self, gain: float = 1.0, batch_size: int | None = None):
        super().__init__(batch_size)
        self.gain = gain

    def score(self, images, prompts, metadata):
        return self.gain * images.float().mean(dim=(1, 2, 3))


NOT_A_SCORER = object()


class FailsOnWord(Scorer):
    """Vivid-like score that is NaN for prompts containing `word`: a reward that fails on some samples."""

    name = "fails_on_word"
    description = "NaN for prompts containing a word, else mean brightness (test plugin)"

    def __init__(self, word: str = "red", batch_size: int | None = None):
        super().__init__(batch_size)
        self.word = word

    def score(self, images, prompts, metadata):
        scores = images.float().mean(dim=(1, 2, 3))
        failing = torch.tensor([self.word in p.split() for p in prompts], device=images.device)
        return torch.where(failing, torch.full_like(scores, float("nan")), scores)
