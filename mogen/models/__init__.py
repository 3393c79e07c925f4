"""Model adapters: the interface the trainer and samplers use (encode prompts, velocity, decode, sample).

The contract (`mogen.models.contract`) imports only torch; the adapters import diffusers and transformers, so
the names below are loaded on first use (PEP 562): importing the contract does not load a model library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mogen.models.tiny import BUILTIN_TINY, LORA_TARGET_MODULES, TextConditioning, TinyConfig, TinyT2I, builtin_tiny_path
    from mogen.models.tokenizer import build_clip_tokenizer

_LAZY = {
    "BUILTIN_TINY": "mogen.models.tiny", "LORA_TARGET_MODULES": "mogen.models.tiny", "TextConditioning": "mogen.models.tiny",
    "TinyConfig": "mogen.models.tiny", "TinyT2I": "mogen.models.tiny", "builtin_tiny_path": "mogen.models.tiny",
    "build_clip_tokenizer": "mogen.models.tokenizer",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mogen.models' has no attribute {name!r}")
