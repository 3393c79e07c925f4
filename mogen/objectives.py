"""Several rewards, one update: group-normalised advantages per objective and per-objective trust regions.

Objective k has raw rewards r_k (B,), a weight w_k, a DPPO threshold delta_k and optionally a budget on the
KL to the base model. Samples come in prompt groups of G (same prompt, different noise).

    A_k = (r_k - mean_group(r_k)) / max(std_group(r_k), floor)             (per_objective, GDPO-style)
    A   = sum_k w_k A_k
or
    A   = normalize_group(sum_k w_k r_k)                                     (sum_then_normalize, Flow-GRPO)

Flow-DPPO with per-objective budgets gives every objective its own term and its own mask:

    loss = sum_k w_k g_k * mean( where(keep_k, -A_k r, 0) ),   keep_k = not mask(r, kl, A_k, delta_k)

where g_k in [0, 1] gates objective k off while the measured KL to the base model exceeds its `max_ref_kl`.
With one objective of weight 1 this is exactly the paper's Flow-DPPO loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mogen.losses import PolicyLossStats, dppo_loss


def group_normalize(rewards: torch.Tensor, group_ids: torch.Tensor, std_floor: float) -> torch.Tensor:
    """(r - group mean) / max(group std, std_floor) for every sample, in float32.

    The std is the population std of the group (as Flow-GRPO); the floor keeps a group whose samples all scored
    the same (std 0) at advantage 0 instead of dividing by zero, and keeps tiny reward differences from being
    blown up to +-1.
    """
    rewards = rewards.float()
    num_groups = int(group_ids.max()) + 1
    counts = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, torch.ones_like(rewards))
    sums = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, rewards)
    means = sums / counts
    centered = rewards - means[group_ids]
    variances = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, centered**2) / counts
    stds = variances.sqrt().clamp_min(std_floor)
    return centered / stds[group_ids]


@dataclass
class Advantages:
    """Per-objective advantages (K, B) and their weighted sum (B,), for the samples kept in the update."""

    per_objective: torch.Tensor
    combined: torch.Tensor


def compute_advantages(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    group_ids: torch.Tensor,
    mode: str,
    std_floor: float,
    clip: float | None,
) -> Advantages:
    """Advantages from raw rewards (K, B) of K objectives; see the module docstring for the two modes.

    In `sum_then_normalize` mode there is a single advantage, so `per_objective` holds it once (K = 1).
    """
    weights = weights.float().to(rewards.device)
    if mode == "per_objective":
        per_objective = torch.stack([group_normalize(r, group_ids, std_floor) for r in rewards])
        if clip is not None:
            per_objective = per_objective.clamp(-clip, clip)
        combined = (weights[:, None] * per_objective).sum(0)
    elif mode == "sum_then_normalize":
        combined = group_normalize((weights[:, None] * rewards.float()).sum(0), group_ids, std_floor)
        if clip is not None:
            combined = combined.clamp(-clip, clip)
        per_objective = combined[None]
    else:
        raise ValueError(f"advantage mode must be 'per_objective' or 'sum_then_normalize', got {mode!r}")
    return Advantages(per_objective=per_objective, combined=combined)


def ref_kl_gate(ref_kl: torch.Tensor, budget: float | None) -> torch.Tensor:
    """g in [0, 1]: 1 while the KL to the base is within budget, annealed linearly to 0 at 1.5x the budget."""
    if budget is None:
        return torch.ones((), device=ref_kl.device)
    return (1.0 - (ref_kl.float() - budget) / (0.5 * budget)).clamp(0.0, 1.0)


def multi_objective_dppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    kl: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    deltas: torch.Tensor,
) -> tuple[torch.Tensor, list[PolicyLossStats]]:
    """sum_k weights_k * dppo_loss(log_prob, old_log_prob, kl, advantages_k, deltas_k): one mask per objective.

    `advantages` is (K, B) (or (K, B, 1) to broadcast over steps); `weights` and `deltas` are (K,). The
    weights already include any ref-KL gate.
    """
    total = torch.zeros((), device=log_prob.device)
    stats = []
    for advantage_k, weight_k, delta_k in zip(advantages, weights, deltas):
        term, term_stats = dppo_loss(log_prob, old_log_prob, kl, advantage_k, delta_k)
        total = total + weight_k * term
        stats.append(term_stats)
    return total, stats
