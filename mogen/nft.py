"""DiffusionNFT (arXiv 2509.16117): reinforcement on the forward process through an implicit policy pair.

Reference code: NVlabs/DiffusionNFT `scripts/train_nft_sd3.py` (the loss, the old-policy EMA) and
`config/nft.py`, `config/base.py` (defaults); Flow-Factory `src/flow_factory/trainers/nft.py` implements the
same loss. Our own code; the equations below are what it computes.

Each rollout sample x0 (the policy's own clean output, any sampler, ODE included) gets a reward and a
group-normalised advantage A. Clipped to [-c, c] it becomes an optimality probability

    r = clip(A, -c, c) / (2c) + 1/2   in [0, 1]                                      (c = 5)

At a training time t with fresh noise eps, x_t = (1 - t) x0 + t eps, the current velocity v = v_theta(x_t, t)
and the old policy's v_old define an implicit positive and negative policy

    v+ = beta v + (1 - beta) v_old,          v- = (1 + beta) v_old - beta v,

(their average is v_old: the old policy is the r = 1/2 mixture of the two). Each is trained to reconstruct x0,

    L+- = mean_d (x0_hat(v+-) - x0)^2 / w+-,    x0_hat(v) = x_t - t v,    w+- = sg(mean_d |x0_hat(v+-) - x0|)

(w is the reference's "adaptive weighting", floored at 1e-5 and not differentiated), and

    loss = c * mean_b [ r L+ + (1 - r) L- ] / beta.

What one step does. With e = x0_hat(v_old) - x0 = t (v* - v_old) (v* = eps - x0) and d = v - v_old,
x0_hat(v+-) - x0 = e -+ t beta d, so at v = v_old (the first step after the old policy was synced)

    d loss_b / d v = c (2r - 1) * 2 t^2 (v - v*) / (w D)         (D = elements per sample)

independent of beta: samples with r > 1/2 (A > 0) are pulled toward their flow-matching target, r < 1/2 are
pushed away, and r = 1/2 (A = 0, e.g. a group whose rewards are all equal) contributes nothing. Since
c (2r - 1) = clip(A, -c, c), the first step is the advantage-weighted, adaptively weighted x0 regression.
With r = 1 everywhere and beta = 1 the loss is plain (weighted) flow matching on the policy's own samples:
c t^2 mean_d (v - v*)^2 / w. For any v, with w+ = w- = w held fixed, the gradient is

    d loss_b / d v = c * 2 t^2 [ (2r - 1)(v_old - v*) + beta (v - v_old) ] / (w D),

so each sample's loss is minimised at v = v_old + (2r - 1)(v* - v_old) / beta: beta is the inverse step size
of an implicit trust region around the old policy (beta -> 0: the gradient no longer depends on v). Averaged
over the x0 behind one x_t (where E[v*] = v_old) this is the paper's optimum v_old + (2 / beta) alpha (v+ - v_old),
alpha = E[r | x_t].

Reference defaults for SD3.5-Medium (config/nft.py): beta 1.0 (0.1 for OCR and the multi-reward run),
c = adv_clip_max 5, old policy = EMA of the LoRA weights with decay ramp min(0.001 * step, 0.5) (OCR: flat 75
steps, then min(0.0075 * s, 0.999)), rollouts drawn from the OLD policy with a deterministic 10-step dpm2
solver, no CFG; training times = the sampler's step times; beta_ref 1e-4 on mean (v - v_base)^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mogen.forward_process import forward_noising, predicted_clean, velocity_penalty

ADAPTIVE_WEIGHT_FLOOR = 1e-5  # train_nft_sd3.py clips the adaptive weight at 1e-5


def optimality_probability(advantages: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """r = clip(A, -c, c) / (2c) + 1/2 in [0, 1], float32.

    `advantages` are mogen's group-normalised advantages (mogen.objectives.compute_advantages); the reference
    normalises per prompt by (R - group mean) / (global std + 1e-4) (flow_grpo/stat_tracking.py,
    sample.global_std True) and maps with adv_clip_max 5 (config/base.py).
    """
    if clip <= 0:
        raise ValueError(f"advantage clip must be > 0, got {clip}")
    return advantages.float().clamp(-clip, clip) / (2.0 * clip) + 0.5


def implicit_policies(
    velocity: torch.Tensor, old_velocity: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v+, v-) = (beta v + (1 - beta) v_old, (1 + beta) v_old - beta v), float32; v_old is not differentiated."""
    v, v_old = velocity.float(), old_velocity.detach().float()
    return v_old + beta * (v - v_old), v_old - beta * (v - v_old)


def reconstruction_loss(error: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """mean_d error^2 / w per sample (B,), w = sg(max(mean_d |error|, 1e-5)) if adaptive else 1."""
    dims = tuple(range(1, error.ndim))
    squared = error.pow(2).mean(dim=dims)
    if not adaptive:
        return squared
    weight = error.detach().abs().mean(dim=dims).clamp_min(ADAPTIVE_WEIGHT_FLOOR)
    return squared / weight


@dataclass
class NFTStats:
    """Diagnostics of one NFT loss evaluation, detached float32 scalars (no host sync until logged)."""

    positive_loss: torch.Tensor
    negative_loss: torch.Tensor
    old_deviation: torch.Tensor
    r_mean: torch.Tensor
    ref_penalty: torch.Tensor

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Python floats for logging (this is where the host sync happens)."""
        return {f"{prefix}{k}": float(v) for k, v in vars(self).items()}


def nft_loss(
    velocity: torch.Tensor,
    old_velocity: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    beta: float = 1.0,
    loss_scale: float = 5.0,
    adaptive_weighting: bool = True,
    ref_velocity: torch.Tensor | None = None,
    ref_beta: float = 0.0,
) -> tuple[torch.Tensor, NFTStats]:
    """The DiffusionNFT loss for one training time per sample (see the module docstring), float32 scalar.

    velocity:      v_theta(x_t, t), (B, ...) -- images (B, C, H, W) or video (B, C, F, H, W); any dtype.
    old_velocity:  the old (EMA) policy's velocity at the same x_t, t.
    x0, noise, t:  the clean rollout sample, the fresh noise and the time (B,) that made x_t.
    r:             optimality probabilities (B,) in [0, 1] (optimality_probability).
    beta:          the mixing coefficient of the implicit policies, > 0.
    loss_scale:    the reference multiplies by its advantage clip (5) so that c (2r - 1) = clip(A).
    ref_velocity:  optional base-model velocity; adds ref_beta * mean_b mean_d (v - v_ref)^2.
    """
    if beta <= 0:
        raise ValueError(f"NFT beta must be > 0, got {beta}")
    r = r.float()
    if r.shape != (x0.shape[0],):
        raise ValueError(f"r must have shape ({x0.shape[0]},), got {tuple(r.shape)}")
    x_t = forward_noising(x0, noise, t)
    clean = x0.float()
    positive, negative = implicit_policies(velocity, old_velocity, beta)
    positive_loss = reconstruction_loss(predicted_clean(x_t, positive, t) - clean, adaptive_weighting)
    negative_loss = reconstruction_loss(predicted_clean(x_t, negative, t) - clean, adaptive_weighting)
    per_sample = loss_scale * (r * positive_loss + (1.0 - r) * negative_loss) / beta
    loss = per_sample.mean()
    ref_penalty = torch.zeros((), device=loss.device)
    if ref_velocity is not None:
        ref_penalty = velocity_penalty(velocity, ref_velocity).mean()
        loss = loss + ref_beta * ref_penalty
    stats = NFTStats(
        positive_loss=positive_loss.detach().mean(),
        negative_loss=negative_loss.detach().mean(),
        old_deviation=velocity_penalty(velocity.detach(), old_velocity).mean(),
        r_mean=r.mean(),
        ref_penalty=ref_penalty.detach(),
    )
    return loss, stats
