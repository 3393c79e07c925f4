"""LoRA on a diffusers transformer through peft: attach, switch off for the base policy, save and load.

The reference policy of the KL penalty and of the forgetting probes is the same transformer with its adapter
disabled, so the base model is never held twice in memory.

Saving works on the transformer as accelerate prepared it, whatever the engine: torch.distributed.checkpoint
gathers the trainable parameters only (under FSDP2 each is a DTensor holding one shard per process; the frozen
base weights are never gathered), and peft turns their parameter names into its adapter key names.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from mogen.config import LoraConfig

INIT_WEIGHTS = {"gaussian": "gaussian", "default": True, "zeros": False}
TRAINED_ADAPTER = "default"  # the name peft gives the adapter attach_lora adds
OLD_ADAPTER = "old"


def attach_lora(transformer: torch.nn.Module, cfg: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze the transformer, add a LoRA adapter on `cfg.target_modules` and return its trainable parameters.

    peft initialises B = 0 (for 'gaussian' and 'default'), so the adapted model starts equal to the base model:
    the first update's importance ratio is exactly 1.
    """
    present = {name.rsplit(".", 1)[-1] for name, _ in transformer.named_modules()}
    present |= {".".join(name.rsplit(".", 2)[-2:]) for name, _ in transformer.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if len(missing) == len(cfg.target_modules):
        raise ValueError(f"lora.target_modules: none of {cfg.target_modules} is a module of {type(transformer).__name__}")
    transformer.requires_grad_(False)
    transformer.add_adapter(
        PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=[m for m in cfg.target_modules if m not in missing],
            init_lora_weights=INIT_WEIGHTS[cfg.init],
        )
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:  # adapters train in float32 even when the base runs in bf16
        p.data = p.data.float()
    return params


@contextmanager
def adapter_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """Run the transformer as the base model (the reference policy) inside the block."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights (peft key names, float32, contiguous, on the CPU) for saving.

    `model` is the transformer, bare or as accelerate prepared it (DDP-wrapped, FSDP2-sharded). With several
    processes every one of them must call this (FSDP all-gathers each LoRA weight's shards) and only the main
    process receives the weights: the others get an empty dict.
    """
    gathered = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    )
    if not gathered:
        return {}
    peft_state = get_peft_model_state_dict(extract_model_from_parallel(model), state_dict=gathered)
    return {k: v.detach().float().contiguous() for k, v in peft_state.items()}


def save_lora(model: torch.nn.Module, path: Path) -> None:
    """Write the adapter's weights (safetensors). Every process must call it; the main process writes."""
    state = lora_state_dict(model)
    if PartialState().is_main_process:
        save_file(state, str(path))


def load_lora(transformer: torch.nn.Module, path: Path) -> None:
    """Load adapter weights saved by `save_lora` into an adapter attached with the same LoRA config.

    `transformer` is the bare model: under FSDP load before accelerator.prepare, which then shards the weights."""
    state = load_file(str(path))
    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path}: LoRA weights do not match the adapter (unexpected keys, e.g. {unexpected[:3]})")


def attach_old_policy(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Add a frozen copy of the trained adapter, the lagging "old" policy DiffusionNFT samples from and contrasts
    against, and return its parameters in the order of attach_lora's (for mogen.forward_process.ema_update_).

    As the reference (NVlabs/DiffusionNFT scripts/train_nft_sd3.py adds a second LoRA adapter "old" and updates it
    as an EMA of the trained one), the base weights are shared: the old policy costs one more LoRA, not a model.
    Call it on the bare transformer after attach_lora; the trained adapter stays the active one.
    """
    with warnings.catch_warnings():  # peft warns that a second adapter is being added, which is the intent
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.add_adapter(copy.deepcopy(transformer.peft_config[TRAINED_ADAPTER]), adapter_name=OLD_ADAPTER)
    transformer.set_adapter(TRAINED_ADAPTER)
    pairs = adapter_pairs(transformer)
    for trained, old in pairs:
        old.data = trained.detach().clone().float()
        old.requires_grad_(False)
    return [old for _, old in pairs]


def adapter_pairs(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(trained, old) LoRA parameters of each adapted weight, in the trained adapter's order; `model` bare or as
    accelerate prepared it (under FSDP2 both are shards with the same placement, so an EMA over them is local)."""
    named = dict(model.named_parameters())
    return [
        (param, named[name.replace(f".{TRAINED_ADAPTER}.", f".{OLD_ADAPTER}.")])
        for name, param in named.items() if f".{TRAINED_ADAPTER}." in name
    ]


def has_old_policy(model: torch.nn.Module) -> bool:
    """Whether attach_old_policy added the old adapter to `model` (bare or prepared)."""
    return OLD_ADAPTER in getattr(extract_model_from_parallel(model), "peft_config", {})


def old_policy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The old adapter's weights under the trained adapter's key names (float32, CPU), for checkpoints.

    Every process must call it (an FSDP2 shard is gathered with `full_tensor`, a collective); all receive them.
    The old adapter is frozen, so lora_state_dict (trainable parameters only) never contains it.
    """
    bare = extract_model_from_parallel(model)
    gathered = {}
    for name, param in bare.named_parameters():
        if f".{OLD_ADAPTER}." in name:
            full = param.full_tensor() if isinstance(param, DTensor) else param
            gathered[name] = full.detach().float().cpu().contiguous()
    return get_peft_model_state_dict(bare, state_dict=gathered, adapter_name=OLD_ADAPTER)


def load_old_policy(transformer: torch.nn.Module, path: Path) -> None:
    """Load weights saved from old_policy_state_dict into the old adapter of the bare transformer."""
    result = set_peft_model_state_dict(transformer, load_file(str(path)), adapter_name=OLD_ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path}: old-policy weights do not match the adapter (unexpected keys, e.g. {unexpected[:3]})")
    transformer.set_adapter(TRAINED_ADAPTER)  # loading must leave the trained adapter active and the old one frozen


@contextmanager
def old_policy(transformer: torch.nn.Module) -> Iterator[None]:
    """Run the bare transformer with the old adapter (attach_old_policy) inside the block, under torch.no_grad."""
    transformer.set_adapter(OLD_ADAPTER)
    try:
        with torch.no_grad():
            yield
    finally:
        transformer.set_adapter(TRAINED_ADAPTER)  # peft also restores requires_grad: trained on, old off
