"""Data parallel over accelerate's processes: who rolls out which samples, and how per-sample results meet.

Every process draws the same global batch (prompts and noise come from generators seeded with (seed, step)) and
rolls out its own contiguous slice of it. Rewards are gathered so that every process holds the scores of the
whole batch and computes the same group-normalised advantages: a prompt group is normalised over all its samples,
wherever they were sampled. Gradients are all-reduced by the engine accelerate prepared (DDP, or FSDP2, which
also shards the weights).
With one process every function here is the identity.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from mogen.config import ConfigError


def check_launch(accelerator: Accelerator) -> None:
    """Refuse engines the trainer does not drive correctly, and a launch where the launcher started N processes
    but accelerate set up no process group (each would train alone on the full batch, all writing one run dir)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "accelerate is set up for DeepSpeed, which mogen align does not support yet (DeepSpeed steps the optimizer "
            "inside its own gradient accumulation, which does not match mogen's accumulation over the trained steps): "
            "launch with DDP (recipes/accelerate/ddp_bf16.yaml) or FSDP2 (recipes/accelerate/fsdp.yaml)"
        )
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "accelerate is set up for FSDP version 1, which cannot shard LoRA's float32 weights on a bf16 base (it "
            "flattens each unit into one tensor of a single dtype): set `fsdp_version: 2` in the accelerate config, "
            "as recipes/accelerate/fsdp.yaml does"
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"launched as {launched} processes but accelerate sees {accelerator.num_processes}: on CPU set "
            "ACCELERATE_USE_CPU=1 (e.g. `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m mogen align ...`); on GPUs "
            "use `accelerate launch --config_file recipes/accelerate/<config>.yaml -m mogen align ...`"
        )


def shard_of(batch_size: int, processes: int, index: int) -> slice:
    """Process `index`'s contiguous slice of a global batch of `batch_size` samples (equal sizes on every process)."""
    if batch_size % processes:
        raise ConfigError(
            f"rollout.prompts_per_batch x rollout.group_size = {batch_size} samples cannot be split evenly over "
            f"{processes} processes: make it a multiple of {processes}"
        )
    size = batch_size // processes
    return slice(index * size, (index + 1) * size)


def gather_samples(tensor: torch.Tensor, accelerator: Accelerator, dim: int = 0) -> torch.Tensor:
    """Concatenate every process's slice of a per-sample tensor along `dim`, in process (= batch) order."""
    if accelerator.num_processes == 1:
        return tensor
    moved = tensor.movedim(dim, 0).contiguous()
    as_float = moved.float() if moved.dtype == torch.bool else moved  # gloo cannot gather bools
    gathered = accelerator.gather(as_float)
    return (gathered.bool() if tensor.dtype == torch.bool else gathered).movedim(0, dim)


def sum_over_processes(tensor: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """Element-wise sum over processes (the tensor itself with one process)."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.clone(), reduction="sum")


def mean_over_processes(values: torch.Tensor, accelerator: Accelerator, weight: float = 1.0) -> torch.Tensor:
    """The mean of every element of every process's `values`; a process with `weight` 0 joins the all-reduce
    (as it must) without counting (its `values` are a stand-in)."""
    count = torch.tensor(weight * values.numel(), device=values.device, dtype=torch.float32)
    totals = sum_over_processes(torch.stack([weight * values.float().sum(), count]), accelerator)
    return totals[0] / totals[1]
