"""reward_zoo: image reward models (scorers) behind one interface, loaded from local weights.

    import reward_zoo
    scorer = reward_zoo.get("ocr", backend="tesseract")       # loaded once
    result = scorer(images, prompts)                          # images: float (B,3,H,W) in [0,1]
    result.scores, result.failed                              # float32 (B,), bool (B,)
    reward_zoo.score_video(scorer, videos, prompts, frames=4, reduce="mean")  # videos: (B,F,3,H,W)

See reward_zoo/README.md for the scorers and their arguments.
"""

from reward_zoo.base import (
    MissingWeightsError,
    Scorer,
    ScorerConfigError,
    ScorerError,
    ScoreResult,
    to_pil,
    to_uint8_hwc,
)
from reward_zoo.registry import ENTRY_POINT_GROUP, RewardInfo, available, get, names
from reward_zoo.video import frame_indices, score_video

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
    "score_video",
    "to_pil",
    "to_uint8_hwc",
]
