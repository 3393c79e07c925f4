"""What the diffusers-pipeline adapters share as functions: checking and loading a local folder, freezing,
offloading, latent sizes and normalization, the schedule shift (`DiffusersPolicy` and the adapters call them).

Every adapter wraps a diffusers pipeline loaded from a folder on disk. Only the transformer trains (through a LoRA
adapter); text encoders and the VAE are frozen and, with `offload=True`, live on the CPU and visit the device
only while they run, which keeps their memory (T5-XXL alone is ~9 GB in bf16) off the accelerator during updates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from mogen.config import ConfigError

MODEL_INDEX = "model_index.json"


def check_pipeline_folder(path: str | Path, family: str, transformer_class: str) -> Path:
    """The folder as a Path if it is a diffusers pipeline whose transformer is `transformer_class`.

    Raises a one-line FileNotFoundError (missing folder or model_index.json) or ConfigError (another family).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found (model.name must be a local diffusers pipeline folder)")
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder}: no {MODEL_INDEX}, so it is not a diffusers pipeline folder (save one with save_pretrained)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{index_file}: not valid JSON ({err})") from None
    transformer = index.get("transformer") or [None, None]
    if transformer[-1] != transformer_class:
        raise ConfigError(
            f"{folder}: a {index.get('_class_name')} with transformer {transformer[-1]}, "
            f"not a {family} pipeline (model.family '{family}' needs a {transformer_class}); fix model.family or model.name"
        )
    return folder


def load_local_pipeline(pipeline_class: type, folder: Path, dtype: torch.dtype) -> Any:
    """`pipeline_class.from_pretrained` from a checked local folder (never the hub), progress bar off; a folder
    that does not load is a one-line ConfigError naming it and the class."""
    try:
        pipeline = pipeline_class.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{folder}: cannot load it as a {pipeline_class.__name__}: {str(err).splitlines()[0]}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def freeze_and_place(transformer: torch.nn.Module, helpers: Sequence[torch.nn.Module], device: torch.device, offload: bool) -> None:
    """Freeze everything (LoRA is attached later), put the transformer on `device`, and the text encoders and
    VAE there too unless they are offloaded to the CPU between uses."""
    for module in [transformer, *helpers]:
        module.requires_grad_(False).eval()
    transformer.to(device)
    for module in helpers:
        module.to("cpu" if offload else device)


@contextmanager
def on_device(modules: Sequence[torch.nn.Module], device: torch.device, offload: bool) -> Iterator[None]:
    """Inside the block the modules are on `device`; with `offload` they go back to the CPU afterwards."""
    if offload:
        for module in modules:
            module.to(device)
    try:
        yield
    finally:
        if offload:
            for module in modules:
                module.to("cpu")


def latents_mean_std(vae: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and std of a Wan-style VAE's latents (Wan's, Qwen-Image's), shaped (1, C, 1, 1, 1) for
    (B, C, F, H, W) latents: the pipelines sample in (x - mean) / std, so decode computes z * std + mean."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    return torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape)


def check_prompts(prompts: list[str]) -> list[str]:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return list(prompts)


def latent_size(resolution: int, vae_scale_factor: int, multiple: int) -> int:
    """Latent height/width for a square image of `resolution` pixels; it must split into whole patches."""
    step = vae_scale_factor * multiple
    if resolution <= 0 or resolution % step:
        raise ValueError(f"resolution must be a positive multiple of {step} pixels for this model, got {resolution}")
    return resolution // vae_scale_factor


def schedule_shift(scheduler_config: dict, image_seq_len: int) -> float:
    """The `sampler.shift` s whose schedule t' = s t / (1 + (s - 1) t) is the pipeline's default one.

    A fixed shift (SD3.5: 3) is s itself. With dynamic shifting (FLUX.1) the pipeline computes
    mu = calculate_shift(number of image tokens) and t' = e^mu / (e^mu + 1/t - 1), which is the same map with
    s = e^mu (s = mu for the 'linear' variant): 3.16 for FLUX.1-dev at 1024 px.
    """
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    mu = calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )
    return mu if scheduler_config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)
