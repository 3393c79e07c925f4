"""Policy losses for flow models whose denoising steps are Gaussian policies: Flow-DPPO and Flow-GRPO.

Shapes: `log_prob`, `old_log_prob`, `kl` and `advantages` are per sample-step tensors of one shape, e.g. (B,)
for one denoising step or (B, S) for S trained steps; `advantages` may also be (B,) broadcast over steps when
the others are (B, S) -- pass it as (B, 1). All math runs in float32.

The one-sample log-ratio  log r = log pi_new(x) - log pi_old(x)  of an equal-variance Gaussian step is
    log r = eps . d / sigma - ||d||^2 / (2 sigma^2),   d = mean_new - mean_old,
with mean -KL and variance 2 KL: the ratio is a noisy stand-in for divergence. Flow-GRPO clips it; Flow-DPPO
measures the divergence exactly and uses the ratio only for the direction of the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mogen.sampling import Reduction, reduce_per_sample


def gaussian_kl(
    mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor | float, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Exact KL(N(mean_a, std^2 I) || N(mean_b, std^2 I)) per sample, shape (B,), float32.

        KL = ||mean_a - mean_b||^2 / (2 std^2)

    Symmetric, since both Gaussians share one std. reduction="mean" averages the per-dimension KL over the
    non-batch dimensions (the scale Flow-DPPO's thresholds are quoted at); "sum" is the exact joint KL.
    """
    diff = mean_a.float() - mean_b.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=diff.device)  # a float, or a tensor broadcastable to diff
    elementwise = diff**2 / (2 * std**2)
    return reduce_per_sample(elementwise.expand_as(diff), reduction)


@dataclass
class PolicyLossStats:
    """Diagnostics of one policy loss evaluation, detached float32 scalars (no host sync until logged).

    masked_fraction is DPPO's share of sample-steps dropped by the trust region, or GRPO's share where the
    clipped branch was taken (clipfrac): the two mean the same thing, "updates that were stopped".
    """

    masked_fraction: torch.Tensor
    kl_mean: torch.Tensor
    kl_max: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Python floats for logging (this is where the host sync happens)."""
        return {f"{prefix}{k}": float(v) for k, v in vars(self).items()}


def _stats(masked: torch.Tensor, kl: torch.Tensor, ratio: torch.Tensor) -> PolicyLossStats:
    ratio, kl = ratio.detach(), kl.detach()
    return PolicyLossStats(
        masked_fraction=masked.float().mean(),
        kl_mean=kl.mean(),
        kl_max=kl.max(),
        ratio_mean=ratio.mean(),
        ratio_min=ratio.min(),
        ratio_max=ratio.max(),
    )


def dppo_mask(ratio: torch.Tensor, kl: torch.Tensor, advantages: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
    """True where Flow-DPPO drops a sample-step's update (the paper's Eq. 18).

    A step is masked iff it is outside the trust region (kl > delta) AND its update pushes further away:
    (A > 0 and r > 1) or (A < 0 and r < 1). Updates that move back toward the old policy always pass.
    """
    pushes_away = ((advantages > 0) & (ratio > 1)) | ((advantages < 0) & (ratio < 1))
    return (kl > delta) & pushes_away


def dppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    kl: torch.Tensor,
    advantages: torch.Tensor,
    delta: float | torch.Tensor,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Flow-DPPO's policy loss: the unclipped surrogate -A r with a divergence-based mask.

        r    = exp(log_prob - old_log_prob)
        loss = mean( where(keep, -A r, 0) ),   keep = not dppo_mask(r, kl, A, delta)

    `kl` is the exact per sample-step KL between the old and the current policy (gaussian_kl of their means);
    it only decides the mask, so it is detached here. `delta` is a scalar or a tensor broadcastable to `kl`
    (per-objective budgets pass one threshold per objective). No ratio clipping.
    """
    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    advantages = advantages.float().expand_as(ratio)
    kl = kl.detach().float().expand_as(ratio)
    masked = dppo_mask(ratio.detach(), kl, advantages, delta)
    loss = torch.where(masked, torch.zeros_like(ratio), -advantages * ratio).mean()
    return loss, _stats(masked, kl, ratio)


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Flow-GRPO's PPO clipped surrogate (the baseline).

        loss = mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) )

    The stats' kl is the one-sample estimate k3 = (r - 1) - log r (CleanRL's approx_kl), since GRPO does not
    compute the exact divergence.
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    advantages = advantages.float().expand_as(ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_taken = clipped.detach() > unclipped.detach()
    approx_kl = (ratio.detach() - 1) - log_ratio.detach()
    return loss, _stats(clip_taken, approx_kl, ratio)
