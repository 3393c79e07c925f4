"""One entry point from a recipe's `model` section to a policy adapter (tiny, sd3 or flux)."""

from __future__ import annotations

import torch

from mogen.config import ConfigError, ModelConfig
from mogen.models.contract import FlowPolicy


def load_policy(cfg: ModelConfig, device: torch.device | str, guidance_scale: float = 1.0) -> FlowPolicy:
    """Load the model named by `cfg` from local files onto `device`, frozen (LoRA is attached by the caller)."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.family == "tiny":
        if cfg.resolution is not None:
            raise ConfigError("model.resolution: the tiny model has a fixed image size; remove the field")
        from mogen.models.tiny import TinyT2I

        return TinyT2I.from_pretrained(cfg.name, device=device, torch_dtype=dtype)
    options = {"resolution": cfg.resolution, "offload": cfg.offload}
    if cfg.max_sequence_length is not None:
        options["max_sequence_length"] = cfg.max_sequence_length
    if cfg.family == "sd3":
        from mogen.models.sd3 import SD3Policy

        return SD3Policy.from_pretrained(cfg.name, device=device, dtype=dtype, guidance_scale=guidance_scale, **options)
    from mogen.models.flux import FluxPolicy

    return FluxPolicy.from_pretrained(cfg.name, device=device, dtype=dtype, guidance_scale=guidance_scale, **options)
