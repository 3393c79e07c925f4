"""Model adapters: the interface the trainer and samplers use (encode prompts, velocity, decode, sample)."""

from mogen.models.tiny import BUILTIN_TINY, LORA_TARGET_MODULES, TextConditioning, TinyConfig, TinyT2I, builtin_tiny_path
from mogen.models.tokenizer import build_clip_tokenizer

__all__ = [
    "BUILTIN_TINY", "LORA_TARGET_MODULES", "TextConditioning", "TinyConfig", "TinyT2I", "build_clip_tokenizer",
    "builtin_tiny_path",
]
