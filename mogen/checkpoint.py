"""Atomic checkpoints: a crash never leaves half a checkpoint, and `--resume` continues bit for bit.

A checkpoint is a folder `checkpoints/step-<N>/` holding the LoRA weights (safetensors, peft key names), the
optimizer state (torch.save, loaded with weights_only=True) and `state.json` (the step); with DiffusionNFT or
AWM also `old_lora.safetensors`, the lagging old / EMA adapter (mogen.lora.attach_old_policy) the next step
samples from or is penalised towards. It is written to a temporary folder and renamed into place; the rename is
atomic on POSIX filesystems. Nothing else needs saving because every random draw of step N comes from
generators seeded with (seed, N): see `mogen.trainer.step_generators`.

The same files serve every engine. torch.distributed.checkpoint gathers the full (unsharded) LoRA and optimizer
state, keyed by parameter name, from the model as accelerate prepared it (bare, DDP, FSDP2); the main process
writes them. On resume every process reads them: the LoRA goes into the bare model before accelerator.prepare
shards it, and the optimizer state is scattered into the prepared optimizer, so a run can also resume under
another engine or process count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from mogen.config import ConfigError
from mogen.lora import has_old_policy, load_lora, load_old_policy, old_policy_state_dict, save_lora

STEP_DIR = re.compile(r"^step-(\d+)$")
OLD_POLICY_FILE = "old_lora.safetensors"
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered to the main process's CPU


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep: int) -> Path:
    """Write `checkpoints/step-<step>/` atomically and prune all but the newest `keep` checkpoints.

    `model` and `optimizer` as accelerate prepared them. Every process must call this (sharded state is
    gathered); the main process writes."""
    main = PartialState().is_main_process
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    save_lora(model, tmp / "lora.safetensors")
    if has_old_policy(model):
        old_state = old_policy_state_dict(model)  # every process: FSDP gathers the shards
        if main:
            save_file(old_state, str(tmp / OLD_POLICY_FILE))
    # an optimizer that never stepped has no state to save (DCP would create one with a zero-lr step)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL_STATE) if optimizer.state else {}
    if not main:
        return final
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted write are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_checkpoint_lora(path: Path, transformer: torch.nn.Module) -> None:
    """Restore the LoRA weights (and the old adapter, if the transformer has one) into the bare transformer,
    before accelerator.prepare (which shards them)."""
    load_lora(transformer, path / "lora.safetensors")
    if has_old_policy(transformer):
        if not (path / OLD_POLICY_FILE).is_file():
            raise ConfigError(f"{path} has no {OLD_POLICY_FILE}: it was written by a run without an old adapter "
                              "(dppo / grpo, or awm with ema_beta 0); resume it with the algorithm it was started with")
        load_old_policy(transformer, path / OLD_POLICY_FILE)


def load_checkpoint_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore the optimizer state into the prepared optimizer (each process keeps its shard); returns the step."""
    state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    if state and all(isinstance(key, int) for key in state["state"]):  # optimizer.state_dict(): written before FSDP support
        optimizer.load_state_dict(state)
    elif state:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    return json.loads((path / "state.json").read_text())["step"]
