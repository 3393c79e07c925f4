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

Diagnostics come from these forwards where they can: a minibatch trained after the first optimizer step sees
a moved policy, so its exact `kl` is the KL one optimizer step moved (`kl_one_step`, free). The KL of the whole
update (`kl_after`) needs one more forward per trained step, so it is measured only when asked for.

Data parallel: each process splits its own samples into the minibatches, and its loss is scaled by
n_process * processes / n_minibatch, so that the gradient the engine averages over processes is exactly the
gradient of the mean loss over the whole minibatch, however unevenly dropped groups left the processes.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.distributed.tensor import DTensor

from mogen.config import AlgorithmConfig
from mogen.distributed import gather_samples, mean_over_processes
from mogen.losses import PolicyLossStats, gaussian_kl, grpo_loss
from mogen.models.contract import FlowPolicy, index_cond
from mogen.objectives import Advantages, multi_objective_dppo_loss
from mogen.rollout import Rollout
from mogen.sampling import STEP_KERNELS


@dataclass
class UpdateInputs:
    """What the update needs besides the rollout: advantages, which samples to use, per-objective knobs."""

    advantages: Advantages  # of this process's samples
    keep: torch.Tensor  # (B_global,) bool, the whole batch: samples whose group had no failed reward
    shard: slice  # this process's samples of the global batch
    weights: torch.Tensor  # (K,) objective weights, ref-KL gates applied (dppo); unused by grpo
    deltas: torch.Tensor  # (K,) per-objective DPPO thresholds
    objective_keys: list[str]


@dataclass
class Visit:
    """One trained step of one minibatch as the update saw it (detached float32, for `mogen calibrate`)."""

    samples: torch.Tensor  # (n,) this process's sample indices of the rollout
    step: int  # which trained step s
    optimizer_steps: int  # optimizer steps taken in this update before this forward (0: the rollout's policy)
    log_ratio: torch.Tensor  # (n,) log r = log_prob - log_prob_old
    kl: torch.Tensor  # (n,) exact KL(pi_theta || pi_old), mean over latent dims


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
    measure_kl_after: bool = True,
    visits: list[Visit] | None = None,
) -> dict[str, float]:
    """Run `updates_per_batch` passes of minibatch gradient steps on one rollout; returns logged statistics.

    `measure_kl_after`: also measure `kl_after` (one no-grad forward per trained step). `visits`: if a list is
    given, every trained step of every minibatch is appended to it as a `Visit`.
    """
    step_kernel = STEP_KERNELS[kind]
    num_steps = rollout.log_probs.shape[1]
    processes = accelerator.num_processes
    kept = torch.nonzero(inputs.keep[inputs.shard].cpu()).flatten()
    global_sizes = minibatch_sizes(inputs.keep, processes, algorithm.minibatches)
    stats_log = UpdateStats()
    optimizer_steps = 0

    for _ in range(algorithm.updates_per_batch):
        order = kept[torch.randperm(len(kept), generator=generator)]
        for minibatch, global_size in zip(order.tensor_split(algorithm.minibatches), global_sizes):
            if global_size == 0:  # empty on every process: all of them skip it
                continue
            minibatch, scale, weight = local_minibatch(minibatch, global_size, processes, rollout.log_probs.device)
            cond = index_cond(rollout.cond, minibatch)
            optimizer.zero_grad(set_to_none=True)
            for s in range(num_steps):
                x, std = rollout.latents[minibatch, s], rollout.stds[s]
                t, t_next = rollout.t[s], rollout.t_next[s]
                with gradient_sync(accelerator, policy.transformer, last=s == num_steps - 1):
                    with accelerator.autocast():
                        velocity = policy.velocity(x, t.expand(len(minibatch)), cond)
                    new = step_kernel(velocity, x, t, t_next, eta, prev_sample=rollout.next_latents[minibatch, s])
                    old_log_prob = rollout.log_probs[minibatch, s]
                    kl = gaussian_kl(new.mean, rollout.means[minibatch, s], std)
                    if optimizer_steps == 1:
                        stats_log.add("kl_one_step", kl.detach().mean(), weight)
                    if visits is not None and weight > 0:
                        log_ratio = (new.log_prob.float() - old_log_prob.float()).detach()
                        visits.append(Visit(minibatch, s, optimizer_steps, log_ratio, kl.detach()))
                    if algorithm.name == "dppo":
                        loss, stats = multi_objective_dppo_loss(
                            new.log_prob, old_log_prob, kl, inputs.advantages.per_objective[:, minibatch],
                            inputs.weights, inputs.deltas,
                        )
                        stats_log.add_policy_stats(stats[0], weight)
                        for key, objective_stats in zip(inputs.objective_keys, stats):
                            stats_log.add(f"mask_fraction/{key}", objective_stats.masked_fraction, weight)
                        stats_log.add("mask_fraction", torch.stack([st.masked_fraction for st in stats]).mean(), weight)
                    else:
                        loss, grpo_stats = grpo_loss(
                            new.log_prob, old_log_prob, inputs.advantages.combined[minibatch], algorithm.clip_range
                        )
                        stats_log.add_policy_stats(grpo_stats, weight)
                        stats_log.add("mask_fraction", grpo_stats.masked_fraction, weight)
                        stats_log.add("kl_exact", kl.detach().mean(), weight)
                    if algorithm.beta > 0 and rollout.ref_means is not None:
                        ref_kl = gaussian_kl(new.mean, rollout.ref_means[minibatch, s], std).mean()
                        loss = loss + algorithm.beta * ref_kl
                        stats_log.add("kl_ref_penalty", ref_kl.detach(), weight)
                    stats_log.add("loss", loss.detach(), weight)
                    accelerator.backward(loss * scale / num_steps)
            clipped_step(accelerator, trainable, optimizer, grad_clip, stats_log)
            optimizer_steps += 1

    summary = stats_log.summary(accelerator)
    if measure_kl_after:
        summary["kl_after"] = float(kl_to_rollout_policy(policy, accelerator, rollout, kept, kind, eta))
    return summary


def local_minibatch(
    minibatch: torch.Tensor, global_size: int, processes: int, device: torch.device
) -> tuple[torch.Tensor, float, float]:
    """This process's part of a minibatch of `global_size` samples: (its sample indices on `device`, the loss scale,
    the weight of its statistics). A process with no sample in it still joins the other processes' forwards and
    gradient all-reduce, with one stand-in sample (index 0), loss scale 0 and weight 0."""
    scale = len(minibatch) * processes / global_size  # 1.0 with one process
    weight = float(len(minibatch))
    if len(minibatch) == 0:
        minibatch = torch.zeros(1, dtype=torch.long)
    return minibatch.to(device), scale, weight


def gradient_sync(accelerator: Accelerator, model: torch.nn.Module, last: bool) -> AbstractContextManager:
    """Accumulate gradients locally; all-reduce them once, with a minibatch's `last` backward."""
    return nullcontext() if last else accelerator.no_sync(model)


def clipped_step(
    accelerator: Accelerator, trainable: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
    grad_clip: float | None, stats_log: UpdateStats,
) -> None:
    """Clip the accumulated (all-reduced) gradient to `grad_clip`, log its norm, and apply it."""
    if grad_clip is not None:
        grad_norm = accelerator.clip_grad_norm_(trainable, grad_clip)  # of the all-reduced gradient
        if isinstance(grad_norm, DTensor):  # FSDP2: the norm over every process's gradient shards
            grad_norm = grad_norm.full_tensor()
        stats_log.add("grad_norm", grad_norm.detach().float(), 1.0)
    optimizer.step()


def minibatch_sizes(keep: torch.Tensor, processes: int, minibatches: int) -> list[int]:
    """Samples in each minibatch over all processes: process p splits the kept samples of its shard of `keep`
    (contiguous, equal-size shards) into `minibatches` near-equal parts, as policy_update does."""
    sizes = torch.zeros(minibatches, dtype=torch.long)
    for shard in keep.cpu().chunk(processes):
        parts = torch.arange(int(shard.sum())).tensor_split(minibatches)
        sizes += torch.tensor([len(part) for part in parts])
    return sizes.tolist()


@torch.no_grad()
def moved_from_rollout(
    policy: FlowPolicy, accelerator: Accelerator, rollout: Rollout, samples: torch.Tensor, kind: str, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Under the current parameters, per sample and trained step (n, S): the exact KL(pi_theta || pi_old) and the
    log-ratio log r of the action the rollout took. One no-grad forward per trained step."""
    step_kernel = STEP_KERNELS[kind]
    cond = index_cond(rollout.cond, samples)
    kls, log_ratios = [], []
    for s in range(rollout.log_probs.shape[1]):
        x, t = rollout.latents[samples, s], rollout.t[s]
        with accelerator.autocast():
            velocity = policy.velocity(x, t.expand(len(samples)), cond)
        new = step_kernel(velocity, x, t, rollout.t_next[s], eta, prev_sample=rollout.next_latents[samples, s])
        kls.append(gaussian_kl(new.mean, rollout.means[samples, s], rollout.stds[s]))
        log_ratios.append(new.log_prob.float() - rollout.log_probs[samples, s])
    return torch.stack(kls, dim=1), torch.stack(log_ratios, dim=1)


def kl_to_rollout_policy(
    policy: FlowPolicy, accelerator: Accelerator, rollout: Rollout, samples: torch.Tensor, kind: str, eta: float
) -> torch.Tensor:
    """Mean exact KL(pi_theta || pi_old) over the given samples (of every process) and trained steps: how far
    this update moved. One forward per trained step; it is what `delta` (and a GRPO clip range) should be
    calibrated against."""
    weight = 1.0 if len(samples) else 0.0  # a process without samples still joins the forwards (FSDP gathers)
    samples = (samples if len(samples) else torch.zeros(1, dtype=torch.long)).to(rollout.log_probs.device)
    kl, _ = moved_from_rollout(policy, accelerator, rollout, samples, kind, eta)
    return mean_over_processes(kl, accelerator, weight)


class UpdateStats:
    """Logged statistics of an update: each value is weighted by the samples it describes (0 for a process's
    stand-in sample), so that means over minibatches, steps and processes are means over samples."""

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[torch.Tensor, float]]] = defaultdict(list)

    def add(self, name: str, value: torch.Tensor, weight: float) -> None:
        self.values[name].append((value.float(), weight))

    def add_policy_stats(self, stats: PolicyLossStats, weight: float) -> None:
        for name in ("kl_mean", "kl_max", "ratio_mean", "ratio_min", "ratio_max"):
            self.add(name, getattr(stats, name), weight)

    def summary(self, accelerator: Accelerator) -> dict[str, float]:
        """One gather and one host sync: weighted means, and min of *_min / max of *_max over weighted entries."""
        names = sorted(self.values)
        rows = []
        for name in names:
            values = torch.stack([v for v, _ in self.values[name]])
            weights = torch.tensor([w for _, w in self.values[name]], device=values.device)
            counted = weights > 0
            rows.append(torch.stack([
                (weights * values).sum(), weights.sum(),
                values[counted].min() if counted.any() else values.new_tensor(float("inf")),
                values[counted].max() if counted.any() else values.new_tensor(float("-inf")),
            ]))
        table = gather_samples(torch.stack(rows)[None], accelerator)  # (processes, names, 4)
        summary = {}
        for i, name in enumerate(names):
            column = table[:, i]
            if name.endswith("_min"):
                summary[name] = column[:, 2].min()
            elif name.endswith("_max"):
                summary[name] = column[:, 3].max()
            else:
                summary[name] = column[:, 0].sum() / column[:, 1].sum()
        return {k: float(v) for k, v in summary.items()}
