"""One entry point from a recipe's `model` section to a policy adapter; adding a family is one line in ADAPTERS."""

from __future__ import annotations

from importlib import import_module

import torch

from mogen.config import ConfigError, ModelConfig
from mogen.models.contract import FlowPolicy

# family -> (module, class) of its adapter, imported only when used (each adapter imports its diffusers pipeline)
ADAPTERS: dict[str, tuple[str, str]] = {
    "sd3": ("mogen.models.sd3", "SD3Policy"),
    "flux": ("mogen.models.flux", "FluxPolicy"),
    "flux2": ("mogen.models.flux2", "Flux2Policy"),
    "qwenimage": ("mogen.models.qwenimage", "QwenImagePolicy"),
    "wan": ("mogen.models.wan", "WanPolicy"),
    "zimage": ("mogen.models.zimage", "ZImagePolicy"),
}


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
    if cfg.num_frames is not None:
        if cfg.family != "wan":
            raise ConfigError(f"model.num_frames: model.family '{cfg.family}' makes images; remove the field")
        options["num_frames"] = cfg.num_frames
    module, name = ADAPTERS[cfg.family]
    adapter = getattr(import_module(module), name)
    return adapter.from_pretrained(cfg.name, device=device, dtype=dtype, guidance_scale=guidance_scale, **options)
