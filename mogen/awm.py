"""Advantage Weighted Matching (AWM, arXiv 2509.25050): the pretraining flow-matching loss, weighted by advantage.

Reference code: scxue/advantage_weighted_matching `advantage_weighted_matching/scripts/train_sd3_awm.py`
(`compute_log_prob_awm`, the PPO-style loss) and `config/dgx_awm.py` (SD3.5 settings); Flow-Factory
`src/flow_factory/trainers/awm.py` (`compute_weighted_log_prob`) is a port of it. Our own code.

AWM treats the negative flow-matching error of a rollout sample x0 as its log-likelihood surrogate. At a
training time t with fresh noise eps, x_t = (1 - t) x0 + t eps and target v* = eps - x0:

    m       = mean_d (v_theta(x_t, t) - v*)^2
    ell     = -m                                  (weighting 'uniform')
            = -t m                                ('t')
            = -t ((m + e)^p - e^p) / p            ('ghuber', generalised Huber, p = 0.25, e = 1e-10)

and optimises it with the PPO-clipped surrogate of GRPO, one ratio per (sample, time):

    a       = clip(A, -c, c) / c * a_max                                 (c = 5, a_max = 1)
    rho     = exp(ell - ell_old)
    loss    = mean max(-a rho, -a clip(rho, 1 - eps_clip, 1 + eps_clip))  (eps_clip = 1)

On the first step after sampling ell_old = sg(ell), so rho = 1 and the gradient is -a grad ell: the
advantage-weighted (and 'ghuber'-weighted) flow-matching gradient. Samples with a > 0 are pulled toward v*,
a < 0 pushed away, a = 0 (equal rewards in a group) contribute nothing; with every a equal to a0 > 0 the
update is a0 times plain flow matching on the policy's own samples. 'ghuber' scales the per-sample gradient
by t (m + e)^(p - 1): samples the model already fits (small m) weigh more, which damps outliers.

Reference defaults for SD3.5-Medium (config/dgx_awm.py): weighting ghuber p 0.25; 6 training times per sample
from the first 90% of a 14-step grid (time_type 'discrete_wo_init' for GenEval, 'discrete' for PickScore),
clip_range 1, adv_clip_max 5 with advantage_max 1, lr 3e-4, CFG 1.0; regularisers beta * mean (v - v_base)^2
(beta 1e-3 GenEval, 3e-3 OCR, 1e-4 PickScore) plus ema_beta 1 * mean (v - v_ema)^2 to an EMA of the LoRA
weights with decay min(0.3, 0.001 * step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mogen.forward_process import flow_matching_target, velocity_penalty

Weighting = Literal["uniform", "t", "ghuber"]
GHUBER_EPS = 1e-10  # train_sd3_awm.py adds 1e-10 before the power


def matching_log_likelihood(
    velocity: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor,
    weighting: Weighting = "ghuber",
    ghuber_power: float = 0.25,
) -> torch.Tensor:
    """AWM's log-likelihood surrogate ell (B,) from the flow-matching error m (see the module docstring), float32."""
    diff = velocity.float() - target.float()
    m = diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))
    t = torch.as_tensor(t, dtype=torch.float32, device=m.device)
    if t.shape != m.shape:
        raise ValueError(f"time must have shape {tuple(m.shape)}, got {tuple(t.shape)}")
    if weighting == "uniform":
        return -m
    if weighting == "t":
        return -t * m
    if weighting == "ghuber":
        if ghuber_power <= 0:
            raise ValueError(f"ghuber_power must be > 0, got {ghuber_power}")
        floor = torch.tensor(GHUBER_EPS, device=m.device) ** ghuber_power
        return -t * ((m + GHUBER_EPS) ** ghuber_power - floor) / ghuber_power
    raise ValueError(f"AWM weighting must be 'uniform', 't' or 'ghuber', got {weighting!r}")


@dataclass
class AWMStats:
    """Diagnostics of one AWM loss evaluation, detached float32 scalars (no host sync until logged)."""

    matching_error: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    clipped_fraction: torch.Tensor
    ref_penalty: torch.Tensor

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Python floats for logging (this is where the host sync happens)."""
        return {f"{prefix}{k}": float(v) for k, v in vars(self).items()}


def awm_loss(
    velocity: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    old_log_likelihood: torch.Tensor | None = None,
    clip_range: float = 1.0,
    advantage_clip: float = 5.0,
    advantage_max: float = 1.0,
    weighting: Weighting = "ghuber",
    ghuber_power: float = 0.25,
    ref_velocity: torch.Tensor | None = None,
    ref_beta: float = 0.0,
) -> tuple[torch.Tensor, AWMStats]:
    """The AWM loss for one training time per sample (see the module docstring), float32 scalar.

    velocity:            v_theta(x_t, t) with x_t = forward_noising(x0, noise, t); (B, ...) images or video.
    advantages:          group-normalised advantages (B,).
    old_log_likelihood:  ell of the sampling policy at the same (x0, noise, t), (B,); None = on-policy
                         (the current ell, detached: ratio 1, gradient -a grad ell).
    ref_velocity:        optional base-model (or EMA) velocity; adds ref_beta * mean_b mean_d (v - v_ref)^2.
    """
    if clip_range <= 0 or advantage_clip <= 0:
        raise ValueError(f"clip_range and advantage_clip must be > 0, got {clip_range}, {advantage_clip}")
    if advantages.shape != (x0.shape[0],):
        raise ValueError(f"advantages must have shape ({x0.shape[0]},), got {tuple(advantages.shape)}")
    target = flow_matching_target(x0, noise)
    log_likelihood = matching_log_likelihood(velocity, target, t, weighting, ghuber_power)
    old = log_likelihood.detach() if old_log_likelihood is None else old_log_likelihood.detach().float()
    ratio = torch.exp(log_likelihood - old)
    a = advantages.float().clamp(-advantage_clip, advantage_clip) / advantage_clip * advantage_max
    clipped_ratio = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    unclipped_loss, clipped_loss = -a * ratio, -a * clipped_ratio
    loss = torch.maximum(unclipped_loss, clipped_loss).mean()
    ref_penalty = torch.zeros((), device=loss.device)
    if ref_velocity is not None:
        ref_penalty = velocity_penalty(velocity, ref_velocity).mean()
        loss = loss + ref_beta * ref_penalty
    ratio = ratio.detach()
    stats = AWMStats(
        matching_error=(velocity.detach().float() - target).pow(2).mean(),
        ratio_mean=ratio.mean(),
        ratio_min=ratio.min(),
        ratio_max=ratio.max(),
        clipped_fraction=(clipped_loss.detach() > unclipped_loss.detach()).float().mean(),
        ref_penalty=ref_penalty.detach(),
    )
    return loss, stats
