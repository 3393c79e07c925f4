"""reward_zoo: image reward models (scorers) behind one interface, loaded from local weights.

    import reward_zoo
    scorer = reward_zoo.get("ocr", backend="tesseract")       # loaded once
    result = scorer(images, prompts)                          # images: float (B,3,H,W) in [0,1]
    result.scores, result.failed                              # float32 (B,), bool (B,)

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

__all__ = [
    "ENTRY_POINT_GROUP",
    "MissingWeightsError",
    "RewardInfo",
    "ScoreResult",
    "Scorer",
    "ScorerConfigError",
    "ScorerError",
    "available",
    "get",
    "names",
    "to_pil",
    "to_uint8_hwc",
]
