"""The policy update of Flow-DPPO (and of the Flow-GRPO baseline), top to bottom in one function.

For each pass over the batch (`updates_per_batch`), for each minibatch, for each trained step s:

    v        = v_theta(x_s, t_s, c)                                       the current policy's velocity
    mean     = kernel_mean(v, x_s, t_s, t'_s)                             Flow-SDE or CPS, in float32
    log_prob = log N(x'_s; mean, std_s^2)                                 x'_s: the action the rollout took
    kl       = ||mean - mean_old||^2 / (2 std_s^2)                        exact, mean_old from the rollout
    dppo:  loss_s = sum_k w_k g_k mean(where(keep_k, -A_k r, 0))          r = exp(log_prob - log_prob_old)
    grpo:  loss_s = mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))
    loss_s += beta * ||mean - mean_ref||^2 / (2 std_s^2)                  optional exact KL to the base model

The gradient of the step losses (averaged over steps) is accumulated, clipped and applied once per minibatch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from mogen.config import AlgorithmConfig
from mogen.losses import PolicyLossStats, gaussian_kl, grpo_loss
from mogen.objectives import Advantages, multi_objective_dppo_loss
from mogen.rollout import STEP_KERNELS, FlowPolicy, Rollout, index_cond


@dataclass
class UpdateInputs:
    """What the update needs besides the rollout: advantages, which samples to use, per-objective knobs."""

    advantages: Advantages
    keep: torch.Tensor  # (B,) bool: samples whose group had no failed reward
    weights: torch.Tensor  # (K,) objective weights, ref-KL gates applied (dppo); unused by grpo
    deltas: torch.Tensor  # (K,) per-objective DPPO thresholds
    objective_keys: list[str]


def policy_update(
    policy: FlowPolicy,
    trainable: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    rollout: Rollout,
    inputs: UpdateInputs,
    algorithm: AlgorithmConfig,
    kind: str,
    eta: float,
    grad_clip: float | None,
    generator: torch.Generator,
) -> dict[str, float]:
    """Run `updates_per_batch` passes of minibatch gradient steps on one rollout; returns logged statistics."""
    step_kernel = STEP_KERNELS[kind]
    num_steps = rollout.log_probs.shape[1]
    kept = torch.nonzero(inputs.keep.cpu()).flatten()
    totals: dict[str, list[torch.Tensor]] = defaultdict(list)

    for _ in range(algorithm.updates_per_batch):
        order = kept[torch.randperm(len(kept), generator=generator)]
        for minibatch in order.chunk(algorithm.minibatches):
            minibatch = minibatch.to(rollout.log_probs.device)
            cond = index_cond(rollout.cond, minibatch)
            optimizer.zero_grad(set_to_none=True)
            for s in range(num_steps):
                x, std = rollout.latents[minibatch, s], rollout.stds[s]
                t, t_next = rollout.t[s], rollout.t_next[s]
                with accelerator.autocast():
                    velocity = policy.velocity(x, t.expand(len(minibatch)), cond)
                new = step_kernel(velocity, x, t, t_next, eta, prev_sample=rollout.next_latents[minibatch, s])
                old_log_prob = rollout.log_probs[minibatch, s]
                kl = gaussian_kl(new.mean, rollout.means[minibatch, s], std)
                if algorithm.name == "dppo":
                    loss, stats = multi_objective_dppo_loss(
                        new.log_prob, old_log_prob, kl, inputs.advantages.per_objective[:, minibatch],
                        inputs.weights, inputs.deltas,
                    )
                    _collect(totals, stats[0], "")
                    for key, objective_stats in zip(inputs.objective_keys, stats):
                        totals[f"mask_fraction/{key}"].append(objective_stats.masked_fraction)
                    totals["mask_fraction"].append(torch.stack([st.masked_fraction for st in stats]).mean())
                else:
                    loss, grpo_stats = grpo_loss(new.log_prob, old_log_prob, inputs.advantages.combined[minibatch], algorithm.clip_range)
                    _collect(totals, grpo_stats, "")
                    totals["mask_fraction"].append(grpo_stats.masked_fraction)
                    totals["kl_exact"].append(kl.detach().mean())
                if algorithm.beta > 0 and rollout.ref_means is not None:
                    ref_kl = gaussian_kl(new.mean, rollout.ref_means[minibatch, s], std).mean()
                    loss = loss + algorithm.beta * ref_kl
                    totals["kl_ref_penalty"].append(ref_kl.detach())
                totals["loss"].append(loss.detach())
                accelerator.backward(loss / num_steps)
            if grad_clip is not None:
                totals["grad_norm"].append(accelerator.clip_grad_norm_(trainable, grad_clip).detach().float())
            optimizer.step()

    summary = _summarize(totals)
    summary["kl_after"] = float(kl_to_rollout_policy(policy, accelerator, rollout, kept, kind, eta))
    return summary


@torch.no_grad()
def kl_to_rollout_policy(
    policy: FlowPolicy, accelerator: Accelerator, rollout: Rollout, samples: torch.Tensor, kind: str, eta: float
) -> torch.Tensor:
    """Mean exact KL(pi_theta || pi_old) over the given samples and trained steps: how far this update moved.

    One forward per trained step; it is what `delta` (and a GRPO clip range) should be calibrated against.
    """
    step_kernel = STEP_KERNELS[kind]
    samples = samples.to(rollout.log_probs.device)
    cond = index_cond(rollout.cond, samples)
    kls = []
    for s in range(rollout.log_probs.shape[1]):
        x, t = rollout.latents[samples, s], rollout.t[s]
        with accelerator.autocast():
            velocity = policy.velocity(x, t.expand(len(samples)), cond)
        mean = step_kernel(velocity, x, t, rollout.t_next[s], eta, prev_sample=rollout.next_latents[samples, s]).mean
        kls.append(gaussian_kl(mean, rollout.means[samples, s], rollout.stds[s]).mean())
    return torch.stack(kls).mean()


def _collect(totals: dict[str, list[torch.Tensor]], stats: PolicyLossStats, prefix: str) -> None:
    for name in ("kl_mean", "kl_max", "ratio_mean", "ratio_min", "ratio_max"):
        totals[prefix + name].append(getattr(stats, name))


def _summarize(totals: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """One host sync: mins of minima, maxes of maxima, means of the rest."""
    summary = {}
    for name, values in totals.items():
        stacked = torch.stack([v.float() for v in values])
        if name.endswith("_min"):
            summary[name] = stacked.min()
        elif name.endswith("_max"):
            summary[name] = stacked.max()
        else:
            summary[name] = stacked.mean()
    return {k: float(v) for k, v in summary.items()}
