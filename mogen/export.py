"""Export a trained LoRA so that diffusers loads it as is: `pipeline.load_lora_weights(out_dir)`.

A diffusers LoRA file is the peft state dict of the transformer's adapter with every key prefixed by the component
("transformer.transformer_blocks.0.attn.to_q.lora_A.weight"), plus the peft LoraConfig in the safetensors metadata.
The metadata matters: without it diffusers assumes lora_alpha = rank, so an adapter trained with alpha/rank = 2
(mogen's default, rank 32 / alpha 64) would load at half strength. The pipelines' own `save_lora_weights` writes
both, the way diffusers' DreamBooth LoRA scripts do.

The tiny built-in model's transformer is an SD3Transformer2DModel, so its LoRA is exported in the SD3 format
(load it with `StableDiffusion3Pipeline.load_lora_weights`, or into the transformer alone with
`transformer.load_lora_adapter(out_dir, prefix="transformer", use_safetensors=True)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig as PeftLoraConfig
from pydantic import ValidationError
from safetensors.torch import load_file

from mogen.config import ConfigError, LoraConfig, ModelConfig
from mogen.lora import TRAINED_ADAPTER, lora_state_dict
from mogen.models.registry import FAMILIES, resolve

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name load_lora_weights looks for by default
def _format(family: str) -> tuple[type, type]:
    """(pipeline that saves and loads the family's LoRA, its transformer class), from mogen.models.registry."""
    if family not in FAMILIES:
        raise ConfigError(f"model.family {family!r} has no LoRA export format; known: {', '.join(FAMILIES)}")
    return resolve(FAMILIES[family].lora_pipeline), resolve(FAMILIES[family].transformer)


def save_diffusers_lora(state: dict[str, torch.Tensor], peft_config: dict[str, Any], family: str, out_dir: str | Path) -> Path:
    """Write a peft state dict (keys without the adapter name) and its peft LoraConfig as a diffusers LoRA folder."""
    pipeline_class, _ = _format(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        out, transformer_lora_layers=state, transformer_lora_adapter_metadata=peft_config, weight_name=LORA_WEIGHT_NAME
    )
    return out / LORA_WEIGHT_NAME


def export_lora(transformer: torch.nn.Module, family: str, out_dir: str | Path) -> Path:
    """Export the trained LoRA adapter attached to `transformer` (by mogen.lora.attach_lora) for `family`'s pipeline.

    `transformer` may be prepared by accelerate (DDP, FSDP2): every process must then call this (the adapter's
    shards are gathered) and the main process writes."""
    _, transformer_class = _format(family)
    bare = extract_model_from_parallel(transformer)
    if not isinstance(bare, transformer_class):
        raise ValueError(f"model.family {family!r} exports a {transformer_class.__name__}, got a {type(bare).__name__}")
    configs = getattr(bare, "peft_config", None)
    if not configs:
        raise ValueError(f"the {type(bare).__name__} has no LoRA adapter to export (attach one with mogen.lora.attach_lora)")
    if TRAINED_ADAPTER not in configs:
        raise ValueError(f"no trained LoRA adapter {TRAINED_ADAPTER!r} to export, found {sorted(configs)}")
    peft_config = configs[TRAINED_ADAPTER]  # nft / awm's old (EMA) adapter is training state, not the result
    state = lora_state_dict(transformer)  # the trainable parameters: the trained adapter only
    if not PartialState().is_main_process:
        return Path(out_dir) / LORA_WEIGHT_NAME
    return save_diffusers_lora(state, peft_config.to_dict(), family, out_dir)


def _read_run_config(run: Path) -> tuple[ModelConfig, LoraConfig]:
    """The model and lora sections of the run's resolved recipe (config.yaml)."""
    path = run / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --run must be a run directory written by `mogen align`")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return ModelConfig.model_validate(data.get("model", {})), LoraConfig.model_validate(data.get("lora", {}))
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ConfigError(f"{path}: model/lora section: {where}: {problem['msg']}") from None


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Export a run's final LoRA (`<run>/lora/adapter.safetensors`) or, with `step`, the checkpoint of that step.

    Needs no model weights: the family and the LoRA rank/alpha come from the run's config.yaml, and the adapted
    modules from the state dict's keys.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory not found")
    model, lora = _read_run_config(run)
    if step is None:
        weights = run / "lora" / "adapter.safetensors"
        hint = "the run has not finished: pass --step N to export checkpoints/step-N"
    else:
        weights = run / "checkpoints" / f"step-{step}" / "lora.safetensors"
        hint = "list the run's checkpoints/ for the steps that were kept"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found ({hint})")
    state = load_file(str(weights))
    targets = sorted({key.split(".lora_")[0] for key in state})
    if not targets:
        raise ConfigError(f"{weights}: holds no LoRA weights (no '.lora_A'/'.lora_B' keys)")
    peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    return save_diffusers_lora(state, peft_config.to_dict(), model.family, out_dir)
