"""The forward process that likelihood-free algorithms (DiffusionNFT, AWM) train on, and their shared helpers.

These algorithms never score a denoising step. They take the policy's own clean samples x0, noise them again
with fresh noise at a few training times, and regress the velocity, weighting each sample by its reward.
Convention (mogen.sampling's): t = 1 is noise, t = 0 is data,

    x_t = (1 - t) x0 + t eps,        target velocity  v* = dx_t/dt = eps - x0,

so an Euler step x + v* (t_next - t) of mogen.sampling.ode_step stays on the same straight path, and the
clean sample a velocity v predicts is x0_hat = x_t - t v (as in mogen.sampling.cps_step).

Also here, because both algorithms use them: where the training times come from, the velocity-space penalty
they use as "KL" to a reference or an EMA policy, and the EMA update of a lagging copy of the LoRA weights.
All math runs in float32 whatever the model's dtype.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch

TimeScheme = Literal["grid_subset", "grid_stratified", "uniform", "logit_normal"]


def _batch_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) time as float32 of shape (B, 1, ..., 1), to broadcast against `like` of any rank (images, video)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    if t.shape != (like.shape[0],):
        raise ValueError(f"time must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def forward_noising(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, float32; t has shape (B,)."""
    t_b = _batch_time(t, x0)
    return (1.0 - t_b) * x0.float() + t_b * noise.float()


def flow_matching_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path, v* = eps - x0, float32."""
    return noise.float() - x0.float()


def predicted_clean(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat = x_t - t v, float32: the clean sample a velocity points at. x0_hat - x0 = t (v* - v) on the path."""
    return x_t.float() - _batch_time(t, x_t) * velocity.float()


def velocity_penalty(velocity: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """mean over non-batch dims of (v - v_other)^2, shape (B,), float32.

    The "v-based KL" both references add as a regulariser (beta * this, to the base model with LoRA disabled,
    or to an EMA copy): DiffusionNFT `scripts/train_nft_sd3.py` (`kl_div_loss`), AWM
    `advantage_weighted_matching/scripts/train_sd3_awm.py` (`kl_weight == 'Uniform'`). It is not a KL between
    distributions; mogen's exact KL to the base is still measured on SDE probe trajectories.
    """
    diff = velocity.float() - other.detach().float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))


def _stratified_unit(num_times: int, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """(K, B) draws in [0, 1): row k lies in stratum [k/K, (k+1)/K), rows shuffled independently per column."""
    offsets = torch.rand(num_times, batch_size, generator=generator)
    u = (torch.arange(num_times, dtype=torch.float32)[:, None] + offsets) / num_times
    order = torch.rand(num_times, batch_size, generator=generator).argsort(dim=0)
    return u.gather(0, order)


def _shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift t' = s t / (1 + (s - 1) t) (mogen.sampling.timesteps uses the same map)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_training_times(
    scheme: TimeScheme,
    num_times: int,
    batch_size: int,
    grid: torch.Tensor | None = None,
    fraction: float = 1.0,
    include_init: bool = True,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flow times (num_times, B) at which each sample's x0 is re-noised for the loss, float32 on `grid`'s device.

    `grid` is the sampler's schedule from t = 1 down to 0 (mogen.sampling.timesteps, N + 1 values); the N
    step times grid[:-1] are the candidates of the two grid schemes.

    grid_subset:      per sample, a random subset of num_times of the N step times, without replacement
                      (DiffusionNFT `scripts/train_nft_sd3.py`: each sample's step times are permuted and the
                      first int(N * timestep_fraction) trained, timestep_fraction 0.99 -> N - 1 of N).
    grid_stratified:  the first floor(N * fraction) step indices cut into num_times strata, one index drawn
                      per stratum, the same for the whole batch (AWM `train_sd3_awm.py`, time_type
                      'discrete' / 'discrete_wo_init': fraction 0.9, 6 times of 14 steps); include_init=False
                      leaves out index 0 (t = 1, where x_t is pure noise), as 'discrete_wo_init'.
    uniform:          stratified uniform times in (0, 1), then shifted.
    logit_normal:     stratified sigmoid(N(0, 1)) times, then shifted (AWM's 'logit_normal', SD3's pretraining
                      density); shift 3 is the references' time_shift.
    """
    if num_times < 1:
        raise ValueError(f"num_times must be >= 1, got {num_times}")
    if scheme in ("grid_subset", "grid_stratified"):
        if grid is None:
            raise ValueError(f"time scheme {scheme!r} needs the sampler's grid")
        steps = grid.float()[:-1]
        if scheme == "grid_subset":
            if num_times > steps.numel():
                raise ValueError(f"num_times {num_times} exceeds the {steps.numel()} sampler steps")
            order = torch.rand(steps.numel(), batch_size, generator=generator).argsort(dim=0)[:num_times]
            return steps[order.to(steps.device)]
        first = 0 if include_init else 1
        last = int(steps.numel() * fraction)
        if last - first < num_times:
            raise ValueError(f"num_times {num_times} exceeds the {last - first} step indices in range")
        bounds = torch.linspace(first, last, num_times + 1)
        low, high = bounds[:-1].long(), bounds[1:].long()
        index = low + (torch.rand(num_times, generator=generator) * (high - low)).long()
        return steps[index.to(steps.device)][:, None].expand(num_times, batch_size).contiguous()
    device = grid.device if grid is not None else None
    u = _stratified_unit(num_times, batch_size, generator)
    if scheme == "uniform":
        t = u
    elif scheme == "logit_normal":
        t = torch.sigmoid(torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)))
    else:
        raise ValueError(f"time scheme must be one of {TimeScheme.__args__}, got {scheme!r}")
    return _shift(t, shift).to(device)


def ramped_decay(step: int, rate: float, cap: float, flat_steps: int = 0) -> float:
    """EMA decay of the lagging policy after `step` optimizer steps: 0 for flat_steps, then min(rate * s, cap).

    Decay 0 makes the old policy a copy of the current one (fully on-policy); the ramp lets it lag more as
    training settles. DiffusionNFT `scripts/train_nft_sd3.py` `return_decay`: type 1 (default) rate 0.001,
    cap 0.5, no flat phase; type 2 (OCR) flat 75, rate 0.0075, cap 0.999. AWM's EMA for its EMA-KL term:
    `train_sd3_awm.py` 'linear', min(0.3, 0.001 * step).
    """
    if step < flat_steps:
        return 0.0
    return min((step - flat_steps) * rate, cap)


@torch.no_grad()
def ema_update_(lagging: Iterable[torch.Tensor], current: Iterable[torch.Tensor], decay: float) -> None:
    """In place: lagging <- decay * lagging + (1 - decay) * current, for matching lists of (LoRA) tensors."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for old, new in zip(lagging, current, strict=True):
        old.lerp_(new.detach().to(old.dtype), 1.0 - decay)
