"""Rollouts: sample images with the current policy and record what the update needs.

A rollout of N samples runs `num_steps` denoising steps. The trained steps (a few, drawn from a window early
in the trajectory, as MixGRPO does) are stochastic Flow-SDE or CPS steps; all other steps are deterministic
ODE steps. For every trained step the rollout records the input x_t, the sample x_{t_next} it drew, the
Gaussian mean and std, and the log-prob. The update then needs no extra forward pass to recompute the old
policy's mean: the exact KL to the old policy is ||mean_theta - mean_old||^2 / (2 std^2) with mean_old read
from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mogen.losses import gaussian_kl
from mogen.models.contract import Conditioning, FlowPolicy
from mogen.sampling import STEP_KERNELS, StepOutput, timesteps
from mogen.trajectory import sample_trajectory


@dataclass
class Rollout:
    """A batch of B samples with S trained steps each. Tensors are float32 unless noted.

    prompts:      B prompts; group_ids (B,) long: samples of one prompt share a group. With data parallel, B is
                  this process's slice of the global batch and the group ids are the global batch's.
    cond:         the prompts' conditioning, batch-first (computed once, reused by the update).
    step_indices: (S,) long, which denoising steps were trained; t, t_next: (S,) their times.
    latents:      (B, S, *latent) x_t, the input of each trained step.
    next_latents: (B, S, *latent) x_{t_next}, the action the step took.
    means:        (B, S, *latent) the old policy's Gaussian mean; stds: (S,) its std.
    log_probs:    (B, S) the old policy's log-prob of next_latents.
    ref_means:    (B, S, *latent) the base model's mean (adapter disabled) or None if not asked for.
    images:       (B, 3, H, W) in [0, 1], the decoded final samples.
    """

    prompts: list[str]
    group_ids: torch.Tensor
    cond: Conditioning
    step_indices: torch.Tensor
    t: torch.Tensor
    t_next: torch.Tensor
    latents: torch.Tensor
    next_latents: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    log_probs: torch.Tensor
    ref_means: torch.Tensor | None
    images: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def ref_kl(self) -> torch.Tensor | None:
        """Exact KL(pi_old || pi_base) per sample and trained step, (B, S), averaged over latent dims."""
        if self.ref_means is None:
            return None
        std = self.stds.view(1, -1, *([1] * (self.means.ndim - 2)))
        return torch.stack(
            [gaussian_kl(self.means[:, s], self.ref_means[:, s], std[:, s]) for s in range(self.means.shape[1])], dim=1
        )


def choose_trained_steps(window: tuple[int, int], count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct step indices from [start, end), sorted, drawn with the step's own generator."""
    start, end = window
    return torch.randperm(end - start, generator=generator)[:count].sort().values + start


@torch.no_grad()
def collect_rollout(
    policy: FlowPolicy,
    prompts: list[str],
    group_ids: torch.Tensor,
    *,
    kind: str,
    eta: float,
    num_steps: int,
    shift: float,
    trained_steps: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
    base_policy: Callable[[], Any] | None = None,
    shard: slice | None = None,
) -> Rollout:
    """Sample one image per prompt and record the trained steps.

    `base_policy`, if given, is a context manager factory under which `policy` acts as the base model (the
    LoRA adapter disabled); it is used to record the base model's mean at each trained step for the exact
    KL to the base: one extra forward per trained step.

    `shard` (data parallel): roll out only these samples of the global batch `prompts`. The noise is drawn for
    the whole batch and sliced, so a sample gets the same noise however the batch is split over processes.
    """
    shard = shard or slice(0, len(prompts))
    global_shape = (len(prompts), *policy.latent_shape)
    prompts, group_ids = list(prompts)[shard], group_ids[shard]
    cond = policy.encode_prompts(prompts)
    x = torch.randn(global_shape, generator=generator, device=device, dtype=torch.float32)[shard]
    times = timesteps(num_steps, shift, device=device)
    trained = set(trained_steps.tolist())
    records: dict[str, list[torch.Tensor]] = {k: [] for k in ("latents", "next", "means", "stds", "log_probs", "ref")}

    def record(i: int, x_t: torch.Tensor, out: StepOutput) -> None:
        if i not in trained:
            return
        records["latents"].append(x_t)
        records["next"].append(out.prev_sample)
        records["means"].append(out.mean)
        records["stds"].append(out.std.flatten()[0])
        records["log_probs"].append(out.log_prob)
        if base_policy is not None:
            t, t_next = times[i], times[i + 1]
            with base_policy():
                ref_velocity = policy.velocity(x_t, t.expand(len(prompts)), cond)
            records["ref"].append(STEP_KERNELS[kind](ref_velocity, x_t, t, t_next, eta, prev_sample=out.prev_sample).mean)

    x = sample_trajectory(
        lambda x_t, t: policy.velocity(x_t, t, cond), x, times, stochastic=trained, kind=kind, eta=eta,
        noise=lambda: torch.randn(global_shape, generator=generator, device=device, dtype=torch.float32)[shard],
        on_step=record,
    )
    images = policy.decode(x).float().clamp(0, 1)
    index = trained_steps.to(device)
    return Rollout(
        prompts=prompts,
        group_ids=group_ids.to(device),
        cond=cond,
        step_indices=index,
        t=times[index],
        t_next=times[index + 1],
        latents=torch.stack(records["latents"], dim=1),
        next_latents=torch.stack(records["next"], dim=1),
        means=torch.stack(records["means"], dim=1),
        stds=torch.stack(records["stds"]),
        log_probs=torch.stack(records["log_probs"], dim=1),
        ref_means=torch.stack(records["ref"], dim=1) if records["ref"] else None,
        images=images,
    )
