"""Several rewards, one update: group-normalised advantages per objective and per-objective trust regions.

Objective k has raw rewards r_k (B,), a weight w_k, a DPPO threshold delta_k and optionally a budget on the
KL to the base model. Samples come in prompt groups of G (same prompt, different noise).

    A_k = (r_k - mean_group(r_k)) / max(s_k, floor)                         (per_objective, GDPO-style)
    A   = sum_k w_k A_k
or
    A   = normalize_group(sum_k w_k r_k)                                     (sum_then_normalize, Flow-GRPO)

with s_k the std of r_k over the sample's own group (`std: group`), or one std of r_k over the whole batch for
every group (`std: batch`: UniRL's `adv_use_global_std: true`, flow_grpo's `config.sample.global_std = True`).
A batch-wide std keeps a group with a small spread from being blown up to +-1: its advantages stay as small as
its reward differences are against the rest of the batch.

Flow-DPPO with per-objective budgets gives every objective its own term and its own mask:

    loss = sum_k w_k g_k * mean( where(keep_k, -A_k r, 0) ),   keep_k = not mask(r, kl, A_k, delta_k)

where g_k in [0, 1] gates objective k off while the measured KL to the base model exceeds its `max_ref_kl`.
With one objective of weight 1 this is exactly the paper's Flow-DPPO loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mogen.losses import PolicyLossStats, dppo_loss


def group_normalize(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    std_floor: float,
    std: str = "group",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """(r - group mean) / max(s, std_floor) for every sample, in float32.

    std="group": s is the population std of the sample's group (as Flow-GRPO's per-prompt tracker).
    std="batch": s is one population std of the raw rewards over the batch, sqrt(mean((r - mean(r))^2)), for
    every group (flow_grpo's np.std; UniRL's Bessel-corrected std differs by sqrt(N / (N - 1)), 1.0007 at N = 768).
    `valid` (B,) bool restricts the batch std to the samples whose reward counts (the objective applies to
    their prompt, their group had no failed reward); the group means are unaffected, a group shares its prompt.
    The floor keeps a group (or batch) whose samples all scored the same at advantage 0 instead of dividing by
    zero, and keeps tiny reward differences from being blown up to +-1.
    """
    rewards = rewards.float()
    num_groups = int(group_ids.max()) + 1
    counts = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, torch.ones_like(rewards))
    sums = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, rewards)
    means = sums / counts
    centered = rewards - means[group_ids]
    if std == "group":
        variances = torch.zeros(num_groups, device=rewards.device).index_add_(0, group_ids, centered**2) / counts
        return centered / variances.sqrt().clamp_min(std_floor)[group_ids]
    if std == "batch":
        counted = rewards if valid is None else rewards[valid.to(rewards.device)]
        batch_std = counted.std(correction=0) if counted.numel() > 1 else rewards.new_zeros(())
        return centered / batch_std.clamp_min(std_floor)
    raise ValueError(f"advantage std must be 'group' or 'batch', got {std!r}")


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
    std: str = "group",
    valid: torch.Tensor | None = None,
) -> Advantages:
    """Advantages from raw rewards (K, B) of K objectives; see the module docstring for the modes and stds.

    In `sum_then_normalize` mode there is a single advantage, so `per_objective` holds it once (K = 1).
    `valid` (K, B) bool marks the rewards a batch std counts (default: all); in `sum_then_normalize` mode a
    sample counts if any of its objectives does. `clip` None leaves the advantages unclipped (UniRL has no clip).
    With data parallel, pass the gathered rewards of the whole batch: the batch std is the whole batch's.
    """
    weights = weights.float().to(rewards.device)
    if mode == "per_objective":
        per_objective = torch.stack([
            group_normalize(r, group_ids, std_floor, std, None if valid is None else valid[k]) for k, r in enumerate(rewards)
        ])
        if clip is not None:
            per_objective = per_objective.clamp(-clip, clip)
        combined = (weights[:, None] * per_objective).sum(0)
    elif mode == "sum_then_normalize":
        summed = (weights[:, None] * rewards.float()).sum(0)
        combined = group_normalize(summed, group_ids, std_floor, std, None if valid is None else valid.any(0))
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
