"""Rollouts: sample images with the current policy and record what the update needs.

A rollout of N samples runs `num_steps` denoising steps. The trained steps (a few, drawn from a window early
in the trajectory, as MixGRPO does) are stochastic Flow-SDE or CPS steps; all other steps are deterministic
ODE steps. For every trained step the rollout records the input x_t, the sample x_{t_next} it drew, the
Gaussian mean and std, and the log-prob. The update then needs no extra forward pass to recompute the old
policy's mean: the exact KL to the old policy is ||mean_theta - mean_old||^2 / (2 std^2) with mean_old read
from here.

It also keeps the final latents (before decoding), the clean samples DiffusionNFT and AWM re-noise
(mogen.forward_update). For them the recorded steps only serve the exact-KL diagnostics (kl/ref, kl/old_new),
and a rollout may have no stochastic step at all (sampler.kind 'ode'): the step records then have S = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mogen.losses import gaussian_kl
from mogen.models.contract import Conditioning, FlowPolicy, index_cond
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
    final_latents: (B, *latent) the final samples before decoding.
    images:       (B, 3, H, W) in [0, 1], the decoded final samples; None if the caller decoded them (`on_chunk`).
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
    final_latents: torch.Tensor
    images: torch.Tensor | None

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


def chunks_of(size: int, chunk_size: int | None) -> list[slice]:
    """[0, size) cut into consecutive slices of `chunk_size` samples (the last may be shorter); one slice if None."""
    step = chunk_size or max(size, 1)
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


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
    chunk_size: int | None = None,
    on_chunk: Callable[[torch.Tensor, slice], None] | None = None,
) -> Rollout:
    """Sample one image per prompt and record the trained steps.

    `base_policy`, if given, is a context manager factory under which `policy` acts as the base model (the
    LoRA adapter disabled); it is used to record the base model's mean at each trained step for the exact
    KL to the base: one extra forward per trained step.

    `shard` (data parallel): roll out only these samples of the global batch `prompts`. The noise is drawn for
    the whole batch and sliced, so a sample gets the same noise however the batch is split over processes.

    `chunk_size`: sample the shard this many samples at a time. All noise (x_1, then one tensor per stochastic
    step) is drawn up front for the global batch in the order the one-chunk loop draws it, and each chunk takes its
    rows, so a sample's trajectory does not depend on the chunking either.

    `on_chunk(final_latents, chunk)`: called as soon as each chunk is sampled, with its final latents and its slice
    of the shard (the trainer decodes and scores it in a background thread while the next chunk samples); the
    returned Rollout then has no images. Without it the rollout decodes the images itself.
    """
    shard = shard or slice(0, len(prompts))
    global_shape = (len(prompts), *policy.latent_shape)
    prompts, group_ids = list(prompts)[shard], group_ids[shard]
    cond = policy.encode_prompts(prompts)

    def draw() -> torch.Tensor:
        return torch.randn(global_shape, generator=generator, device=device, dtype=torch.float32)[shard]

    x_start = draw()
    noises = [draw() for _ in range(len(trained_steps))]  # one per stochastic step (the trained ones), in step order
    times = timesteps(num_steps, shift, device=device)
    trained = set(trained_steps.tolist())

    def sample_chunk(chunk: slice) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Denoise the chunk's samples; returns their final latents and the trained steps' records."""
        chunk_cond, chunk_noise = index_cond(cond, chunk), iter([noise[chunk] for noise in noises])
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
                    ref_velocity = policy.velocity(x_t, t.expand(len(x_t)), chunk_cond)
                records["ref"].append(STEP_KERNELS[kind](ref_velocity, x_t, t, t_next, eta, prev_sample=out.prev_sample).mean)

        x = sample_trajectory(
            lambda x_t, t: policy.velocity(x_t, t, chunk_cond), x_start[chunk], times, stochastic=trained, kind=kind,
            eta=eta, noise=lambda: next(chunk_noise), on_step=record,
        )
        return x, records

    parts, finals, images = [], [], []
    for chunk in chunks_of(len(prompts), chunk_size):
        x, records = sample_chunk(chunk)
        parts.append(records)
        finals.append(x)
        if on_chunk is not None:
            on_chunk(x, chunk)
        else:
            images.append(policy.decode(x).float().clamp(0, 1))

    def joined(key: str) -> torch.Tensor:
        """(B, S, ...): each chunk's per-step records stacked on dim 1, the chunks concatenated in sample order."""
        if not trained:  # an all-ODE rollout: S = 0
            per_sample = () if key == "log_probs" else x_start.shape[1:]
            return x_start.new_empty((len(prompts), 0, *per_sample))
        return torch.cat([torch.stack(records[key], dim=1) for records in parts])

    index = trained_steps.to(device)
    return Rollout(
        prompts=prompts,
        group_ids=group_ids.to(device),
        cond=cond,
        step_indices=index,
        t=times[index],
        t_next=times[index + 1],
        latents=joined("latents"),
        next_latents=joined("next"),
        means=joined("means"),
        stds=torch.stack(parts[0]["stds"]) if trained else times.new_empty(0),  # the same for every sample
        log_probs=joined("log_probs"),
        ref_means=joined("ref") if base_policy is not None else None,
        final_latents=torch.cat(finals),
        images=torch.cat(images) if images else None,
    )
