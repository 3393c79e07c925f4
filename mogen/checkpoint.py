"""Atomic checkpoints: a crash never leaves half a checkpoint, and `--resume` continues bit for bit.

A checkpoint is a folder `checkpoints/step-<N>/` holding the LoRA weights (safetensors), the optimizer state
(torch.save, loaded with weights_only=True) and `state.json` (the step). It is written to a temporary folder
and renamed into place; the rename is atomic on POSIX filesystems. Nothing else needs saving because every
random draw of step N comes from generators seeded with (seed, N): see `mogen.trainer.step_generators`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mogen.lora import load_lora, save_lora

STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    run_dir: Path, step: int, transformer: torch.nn.Module, optimizer: torch.optim.Optimizer, keep: int
) -> Path:
    """Write `checkpoints/step-<step>/` atomically and prune all but the newest `keep` checkpoints."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_lora(transformer, tmp / "lora.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_checkpoint(path: Path, transformer: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore LoRA weights and optimizer state in place; returns the saved state (`{"step": N}`)."""
    load_lora(transformer, path / "lora.safetensors")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((path / "state.json").read_text())
