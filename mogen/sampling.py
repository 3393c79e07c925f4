"""Denoising step kernels for flow-matching models: Flow-SDE, CPS and the deterministic ODE.

Convention (the same everywhere in mogen):
    flow time t in [0, 1]; t = 1 is pure noise, t = 0 is data;
    x_t = (1 - t) * x0 + t * eps;  the model predicts the velocity v ~ eps - x0;
    a step goes from t to t_next < t, so dt = t_next - t is negative.

A stochastic step is a Gaussian policy  pi(x_next | x_t) = N(mean, std^2 I)  whose std does not depend on the
model's parameters. That is what lets Flow-DPPO compute the exact KL between the old and the new policy:
    KL = ||mean_new - mean_old||^2 / (2 std^2)      (see mogen.losses.gaussian_kl)

All math runs in float32 whatever the model's dtype, and `prev_sample` comes back in float32: storing it in
bf16 and scoring it again later would make the importance ratio differ from 1 before any update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Reduction = Literal["mean", "sum"]
TimeLike = float | torch.Tensor


@dataclass
class StepOutput:
    """What one denoising step returns.

    prev_sample: x_{t_next}, float32, shape of the input sample.
    mean:        the Gaussian mean of the step, float32.
    std:         the Gaussian std, float32, broadcastable to `mean` (shape (B, 1, ..., 1)); zero for ODE steps.
    log_prob:    log-density of `prev_sample` under N(mean, std^2), shape (B,); None for ODE steps.
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor | None


def timesteps(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """The `num_steps + 1` flow times from 1 to 0 of a sampling schedule, float32.

    With shift s, t' = s*t / (1 + (s - 1)*t), the resolution-dependent shift SD3 uses (s = 3 for SD3.5);
    s = 1 gives uniform steps.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32, device=device)
    return shift * t / (1.0 + (shift - 1.0) * t)


def _as_batch_time(t: TimeLike, like: torch.Tensor) -> torch.Tensor:
    """A time given as a float or a (B,) tensor, as float32 of shape (B, 1, ..., 1) for broadcasting."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(f"time must be a float or a tensor of shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample, shape (B,), in float32.

    Per element: -(x - mean)^2 / (2 std^2) - log(std) - log(2 pi) / 2.
    reduction="mean" averages over the non-batch dimensions (as Flow-GRPO and DanceGRPO do, so clip ranges and
    KL thresholds from the literature transfer); reduction="sum" is the exact joint log-density.
    """
    x, mean, std = x.float(), mean.float(), std.float()
    elementwise = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return reduce_per_sample(elementwise.expand_as(x), reduction)


def reduce_per_sample(elementwise: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Reduce an elementwise quantity over every non-batch dimension to shape (B,)."""
    dims = tuple(range(1, elementwise.ndim))
    if reduction == "mean":
        return elementwise.mean(dim=dims)
    if reduction == "sum":
        return elementwise.sum(dim=dims)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _gaussian_step(
    mean: torch.Tensor,
    std: torch.Tensor,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    prev_sample: torch.Tensor | None,
    reduction: Reduction,
) -> StepOutput:
    """Draw x_next = mean + std * noise (or score the given `prev_sample`) and return its log-prob."""
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        prev_sample = mean + std * noise.float()
    prev_sample = prev_sample.float()
    log_prob = gaussian_log_prob(prev_sample, mean, std, reduction)
    return StepOutput(prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob)


def flow_sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    t: TimeLike,
    t_next: TimeLike,
    eta: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> StepOutput:
    """One Euler-Maruyama step of the Flow-SDE that has the same marginals as the flow ODE (Flow-GRPO).

        sigma_t = eta * sqrt(t / (1 - t))     (at t = 1, 1 - t_next replaces 1 - t in the denominator)
        mean    = x + [v + sigma_t^2 / (2 t) * (x + (1 - t) v)] * dt
        std     = sigma_t * sqrt(-dt)

    If `prev_sample` is given it is scored instead of drawing a fresh sample (the update's log-prob of the
    rollout's action); otherwise prev_sample = mean + std * noise.
    """
    x, v = sample.float(), velocity.float()
    t_b, t_next_b = _as_batch_time(t, x), _as_batch_time(t_next, x)
    dt = t_next_b - t_b
    one_minus_t = torch.where(t_b >= 1.0, 1.0 - t_next_b, 1.0 - t_b)
    sigma = eta * torch.sqrt(t_b / one_minus_t)
    mean = x + (v + sigma**2 / (2 * t_b) * (x + (1 - t_b) * v)) * dt
    std = sigma * torch.sqrt(-dt)
    return _gaussian_step(mean, std, noise, generator, prev_sample, reduction)


def cps_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    t: TimeLike,
    t_next: TimeLike,
    eta: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> StepOutput:
    """One coefficients-preserving (CPS) step: re-noise the predicted clean sample to exactly level t_next.

        x0_hat = x - t v,   x1_hat = x + (1 - t) v            (predicted data and noise)
        mean   = (1 - t_next) x0_hat + t_next cos(eta pi / 2) x1_hat
        std    = t_next sin(eta pi / 2)

    Because cos^2 + sin^2 = 1, x_next = (1 - t_next) x0 + t_next (cos * eps + sin * xi) keeps the noise
    coefficient exactly t_next: the sample stays on the model's training marginal. Its std is zero at
    t_next = 0, so the last step has no log-prob to train on.
    """
    x, v = sample.float(), velocity.float()
    t_b, t_next_b = _as_batch_time(t, x), _as_batch_time(t_next, x)
    x0_hat = x - t_b * v
    x1_hat = x + (1 - t_b) * v
    angle = eta * math.pi / 2
    mean = (1 - t_next_b) * x0_hat + t_next_b * math.cos(angle) * x1_hat
    std = t_next_b * math.sin(angle)
    return _gaussian_step(mean, std, noise, generator, prev_sample, reduction)


def ode_step(velocity: torch.Tensor, sample: torch.Tensor, t: TimeLike, t_next: TimeLike) -> StepOutput:
    """One deterministic Euler step of the flow ODE: x_next = x + v * dt. Used for evaluation; no log-prob."""
    x, v = sample.float(), velocity.float()
    dt = _as_batch_time(t_next, x) - _as_batch_time(t, x)
    mean = x + v * dt
    return StepOutput(prev_sample=mean, mean=mean, std=torch.zeros_like(dt), log_prob=None)


STEP_KERNELS: dict[str, Callable[..., StepOutput]] = {"sde": flow_sde_step, "cps": cps_step}  # sampler.kind -> kernel
