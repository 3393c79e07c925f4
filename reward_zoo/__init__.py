"""reward_zoo: image reward models (scorers) behind one interface, loaded from local weights.

    import reward_zoo
    scorer = reward_zoo.get("ocr", backend="tesseract")       # loaded once
    result = scorer(images, prompts)                          # images: float (B,3,H,W) in [0,1]
    result.scores, result.failed                              # float32 (B,), bool (B,)
    reward_zoo.score_video(scorer, videos, prompts, frames=4, reduce="mean")  # videos: (B,F,3,H,W)

See reward_zoo/README.md for the scorers and their arguments. `import reward_zoo` does not import torch:
the scorer contract (`Scorer`, `ScoreResult`, ...) is loaded on first use, so command lines stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reward_zoo.errors import MissingWeightsError, ScorerConfigError, ScorerError
from reward_zoo.registry import ENTRY_POINT_GROUP, RewardInfo, available, get, names, register

if TYPE_CHECKING:
    from reward_zoo.base import Scorer, ScoreResult, to_pil, to_uint8_hwc
    from reward_zoo.video import frame_indices, score_video

_CONTRACT = ("Scorer", "ScoreResult", "to_pil", "to_uint8_hwc")  # in reward_zoo.base, which imports torch
_VIDEO = ("frame_indices", "score_video")  # in reward_zoo.video, which imports torch

__all__ = [
    "ENTRY_POINT_GROUP",
    "MissingWeightsError",
    "RewardInfo",
    "ScoreResult",
    "Scorer",
    "ScorerConfigError",
    "ScorerError",
    "available",
    "frame_indices",
    "get",
    "names",
    "register",
    "score_video",
    "to_pil",
    "to_uint8_hwc",
]


def __getattr__(name: str) -> Any:
    """The scorer contract's and video scoring's names, imported when first asked for (PEP 562)."""
    if name in _CONTRACT:
        from reward_zoo import base

        return getattr(base, name)
    if name in _VIDEO:
        from reward_zoo import video

        return getattr(video, name)
    raise AttributeError(f"module 'reward_zoo' has no attribute {name!r}")
