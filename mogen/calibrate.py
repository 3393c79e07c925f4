"""`mogen calibrate`: a pre-flight that shows where a recipe's trust region sits, before a long run.

It runs the recipe's first N steps through the trainer's own per-step code (`collect_batch`, `update_policy`:
same seeds, same draws, same update), in memory, writing nothing, and reports:

- on-policy check: on the first minibatch the update scores the rollout's own actions with the rollout's
  parameters, so log r = 0 and KL = 0 unless the rollout's and the training forward's numerics differ (bf16
  autocast, batch-shape-dependent kernels); the same gap re-measured at other batch shapes;
- D (latent elements per sample) and, per denoising step, the exact KL that one optimizer step moves (median,
  p90) with the spread of log r against its prediction sqrt(2 KL / D): a mean-over-dims log r has mean -KL and
  variance 2 KL / D, so a ratio clip eps binds at KL ~ min(eps, D eps^2 / 2) (exactly: mogen.trust_region);
- the share of sample-steps the recipe's delta masks (the number the trainer logs as `mask_fraction`) and
  its eps would clip, the delta and eps that would give `target` of them, and the reference-equivalent settings;
- reward health per objective: share of prompt groups whose rewards differ (no spread, no advantage), the
  failed fraction, images per second.

The counterfactual fractions re-apply another delta or eps to the update's recorded (log r, KL, advantage) of
every sample-step; the first optimizer step does not depend on delta (KL = 0 there), later ones do, so they
describe the recipe's own trajectory.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from rich.table import Table

from mogen.config import ConfigError, Recipe
from mogen.losses import gaussian_kl
from mogen.models.contract import index_cond
from mogen.sampling import STEP_KERNELS
from mogen.trainer import Batch, Components, build_components, collect_batch, needs_ref_kl, update_policy
from mogen.trust_region import REFERENCE_CLIP_RANGE, REFERENCE_D, REFERENCE_DELTA, binding_kl, matched_eps
from mogen.update import Visit, moved_from_rollout

def _fraction_above(values: torch.Tensor, threshold: float) -> float:
    return float((values > threshold).float().mean())


def _threshold_for(values: torch.Tensor, fraction: float) -> float | None:
    """The threshold t with mean(values > t) closest to `fraction` (None if fewer values can ever pass)."""
    ordered = values.sort(descending=True).values
    count = round(fraction * len(ordered))
    if count >= len(ordered) or not math.isfinite(float(ordered[count])):
        return None
    return float(ordered[count])


def _on_policy_gap(c: Components, batch: Batch, minibatch_size: int) -> dict[str, float]:
    """max |log p - log p_rollout| and max KL to the rollout's mean at the first trained step, re-computed with
    the rollout's parameters at batch shapes: the rollout's, the update's minibatch, and single samples."""
    rollout, kind, eta = batch.rollout, c.recipe.sampler.kind, c.recipe.sampler.eta
    step_kernel = STEP_KERNELS[kind]
    gaps = {}
    for size in sorted({len(rollout), minibatch_size, 1}, reverse=True):
        chunks = torch.arange(min(len(rollout), 2) if size == 1 else len(rollout)).split(size)
        log_gap, kl_gap = 0.0, 0.0
        for chunk in chunks:
            chunk = chunk.to(rollout.log_probs.device)
            with torch.no_grad(), c.accelerator.autocast():
                velocity = c.policy.velocity(rollout.latents[chunk, 0], rollout.t[0].expand(len(chunk)), index_cond(rollout.cond, chunk))
            new = step_kernel(velocity, rollout.latents[chunk, 0], rollout.t[0], rollout.t_next[0], eta,
                              prev_sample=rollout.next_latents[chunk, 0])
            log_gap = max(log_gap, float((new.log_prob.float() - rollout.log_probs[chunk, 0]).abs().max()))
            kl_gap = max(kl_gap, float(gaussian_kl(new.mean, rollout.means[chunk, 0], rollout.stds[0]).max()))
        gaps[str(size)] = {"log_prob_gap_max": log_gap, "kl_max": kl_gap}
    return gaps


def _pushes_away(log_ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """(K, n): the update of objective k pushes the sample-step further from the old policy (DPPO's condition)."""
    return ((advantages > 0) & (log_ratio > 0)) | ((advantages < 0) & (log_ratio < 0))


def calibrate(recipe: Recipe, steps: int = 5, target: float = 0.05) -> dict[str, Any]:
    """Run the recipe's first `steps` steps as the trainer would and return the report (see the module docstring)."""
    if not 0 < target < 1:
        raise ConfigError(f"--target-mask must be in (0, 1), got {target}")
    if recipe.algorithm.uses_forward_process:
        raise ConfigError(f"algorithm.name: mogen calibrate shows where dppo's delta and grpo's clip_range bind on the"
                          f" rollout's recorded steps; {recipe.algorithm.name} has neither (it trains on re-noised final samples)")
    started = time.perf_counter()
    accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision)
    c = build_components(recipe, accelerator)
    d = math.prod(c.policy.latent_shape)
    algorithm = recipe.algorithm
    logged: list[dict[str, float]] = []
    dppo_values, clip_values, moved = [], [], []  # pooled over steps: masked-if-above values, clip values, (denoising step, kl, log r)
    scores, on_policy, rollout_s, reward_s, images = [], {}, 0.0, 0.0, 0
    for step in range(steps):
        batch = collect_batch(c, step, measure_ref_kl=needs_ref_kl(recipe))
        if step == 0:
            minibatch = math.ceil(int(batch.inputs.keep.sum()) / algorithm.minibatches)
            on_policy["batch_shapes"] = _on_policy_gap(c, batch, minibatch)
        visits: list[Visit] = []
        metrics = {**batch.metrics, **update_policy(c, batch, measure_kl_after=False, visits=visits)}
        logged.append(metrics)
        scores.append((batch.scores, batch.rollout.group_ids))
        rollout_s, reward_s, images = rollout_s + metrics["time/rollout_s"], reward_s + metrics["time/reward_s"], images + len(batch.rollout)
        if not visits:
            continue
        advantages = batch.inputs.advantages
        first = [v for v in visits if v.optimizer_steps == 0]
        if step == 0 and first:
            on_policy["first_minibatch_log_ratio_max"] = float(torch.cat([v.log_ratio.abs() for v in first]).max())
            on_policy["first_minibatch_kl_max"] = float(torch.cat([v.kl for v in first]).max())
        for v in visits:  # what the recipe's delta and eps see at every trained sample-step
            pushes = _pushes_away(v.log_ratio, advantages.per_objective[:, v.samples])
            dppo_values.append(torch.where(pushes, v.kl, -math.inf).flatten())
            a = advantages.combined[v.samples]
            clip_values.append(torch.where(a != 0, torch.sign(a) * torch.expm1(v.log_ratio), -math.inf))
        after_one = [v for v in visits if v.optimizer_steps == 1]
        if after_one:
            moved += [(int(batch.rollout.step_indices[v.step]), v.kl, v.log_ratio) for v in after_one]
        else:  # a single optimizer step per batch: measure it after the update
            kept = torch.nonzero(batch.inputs.keep[batch.inputs.shard]).flatten()
            kl, log_ratio = moved_from_rollout(c.policy, accelerator, batch.rollout, kept, recipe.sampler.kind, recipe.sampler.eta)
            moved += [(int(batch.rollout.step_indices[s]), kl[:, s], log_ratio[:, s]) for s in range(kl.shape[1])]

    if not moved:
        raise ConfigError(f"no update ran in {steps} steps: every group had a failed reward (see `mogen rewards list`)")
    mask_logged = [m["mask_fraction"] for m in logged]
    dppo_all, clip_all = torch.cat(dppo_values).cpu(), torch.cat(clip_values).cpu()
    per_step = []
    for index in sorted({i for i, _, _ in moved}):
        kl = torch.cat([k for i, k, _ in moved if i == index]).cpu()
        log_ratio = torch.cat([r for i, _, r in moved if i == index]).cpu()
        per_step.append({
            "denoising_step": index, "samples": len(kl),
            "kl_median": float(kl.median()), "kl_p90": float(kl.quantile(0.9)),
            "log_ratio_std": float(log_ratio.std()), "predicted_log_ratio_std": float((2 * kl.mean() / d).sqrt()),
        })
    all_moved = torch.cat([k for _, k, _ in moved]).cpu()
    on_policy["verdict"] = _verdict(on_policy, algorithm.delta)
    return {
        "recipe": {"algorithm": algorithm.name, "delta": algorithm.delta, "clip_range": algorithm.clip_range,
                   "mixed_precision": recipe.train.mixed_precision, "steps": steps, "seed": recipe.train.seed,
                   "batch_size": len(scores[0][1]), "minibatches": algorithm.minibatches,
                   "updates_per_batch": algorithm.updates_per_batch},
        "latent_elements": d,
        "on_policy": on_policy,
        "kl_one_optimizer_step": {"mean": float(all_moved.mean()), "median": float(all_moved.median()), "p90": float(all_moved.quantile(0.9)),
                                  "max": float(all_moved.max()), "per_denoising_step": per_step},
        "trust_region": {
            "mask_fraction_per_step": mask_logged, "mask_fraction_mean": float(np.mean(mask_logged)),
            "mask_fraction_max": float(np.max(mask_logged)),
            "delta_mask_fraction": _fraction_above(dppo_all, algorithm.delta),
            "clip_fraction": _fraction_above(clip_all, algorithm.clip_range),
            "target_fraction": target,
            "delta_for_target": _threshold_for(dppo_all, target),
            "clip_range_for_target": _threshold_for(clip_all, target),
        },
        "reference_equivalent": {
            "delta": REFERENCE_DELTA,
            "clip_range": matched_eps(REFERENCE_CLIP_RANGE, REFERENCE_D, d),
            "clip_range_binds_at_kl": binding_kl(algorithm.clip_range, d),
            "reference_clip_binds_at_kl": binding_kl(REFERENCE_CLIP_RANGE, REFERENCE_D),
        },
        "rewards": _reward_health(scores, c.objectives.keys) | {
            "rollout_images_per_s": images / rollout_s, "reward_images_per_s": images / reward_s,
        },
        "seconds": time.perf_counter() - started,
    }


def _verdict(on_policy: dict[str, Any], delta: float) -> str:
    """exact: log r and KL are 0 on the first minibatch; close: the mismatch KL is under delta / 10 (the mask
    does not fire on it); mismatch: the trust region sees numerical noise as policy movement."""
    if "first_minibatch_kl_max" not in on_policy:
        return "no update"
    if on_policy["first_minibatch_log_ratio_max"] == 0 and on_policy["first_minibatch_kl_max"] == 0:
        return "exact"
    return "close" if on_policy["first_minibatch_kl_max"] < delta / 10 else "mismatch"


def _reward_health(scores: list, keys: list[str]) -> dict[str, Any]:
    """Per objective, over every calibrated step: the share of applicable prompt groups whose rewards differ
    (a group without spread gives no advantage), and the mean reward; the share of samples whose scoring failed."""
    objectives = {}
    for k, key in enumerate(keys):
        spread, groups, values = 0, 0, []
        for batch_scores, group_ids in scores:
            raw = batch_scores.raw[k].cpu()
            for g in group_ids.unique().cpu():
                group = raw[group_ids.cpu() == g]
                group = group[~torch.isnan(group)]
                if len(group):
                    groups += 1
                    spread += int(group.max() > group.min())
                    values.append(group)
        objectives[key] = {
            "groups_with_spread": spread / groups if groups else None,
            "mean": float(torch.cat(values).mean()) if values else None,
        }
    failed = torch.cat([s.failed.float().cpu() for s, _ in scores])
    return {"objectives": objectives, "failed_fraction": float(failed.mean())}


def _threshold_text(value: float | None) -> str:
    return "unreachable" if value is None else f"{value:.2e}"


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def render(report: dict[str, Any]) -> Table:
    """The report as a rich Table (what the CLI prints)."""
    r, tr, ref = report["recipe"], report["trust_region"], report["reference_equivalent"]
    table = Table(title=f"mogen calibrate: {r['algorithm']}, {r['steps']} steps, D = {report['latent_elements']}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("what it means")
    op = report["on_policy"]
    table.add_row("on-policy (first minibatch)", op["verdict"],
                  f"max |log r| {op.get('first_minibatch_log_ratio_max', float('nan')):.2e}, "
                  f"max KL {op.get('first_minibatch_kl_max', float('nan')):.2e} (mixed precision: {r['mixed_precision']})")
    for size, gap in op["batch_shapes"].items():
        table.add_row(f"  log-prob gap at batch {size}", f"{gap['log_prob_gap_max']:.2e}", f"KL to the rollout's mean {gap['kl_max']:.2e}")
    moved = report["kl_one_optimizer_step"]
    table.add_row("KL one optimizer step moves", f"{moved['median']:.2e}", f"median; p90 {moved['p90']:.2e}, max {moved['max']:.2e}")
    for row in moved["per_denoising_step"]:
        table.add_row(f"  denoising step {row['denoising_step']}", f"{row['kl_median']:.2e}",
                      f"p90 {row['kl_p90']:.2e}; std log r {row['log_ratio_std']:.2e} vs sqrt(2 KL/D) {row['predicted_log_ratio_std']:.2e}")
    table.add_row(f"mask fraction at delta {r['delta']:.1e}", f"{tr['mask_fraction_mean']:.2%}",
                  f"mean over steps (max {tr['mask_fraction_max']:.2%}); the trainer logs the same")
    table.add_row(f"clip fraction at eps {r['clip_range']:.1e}", f"{tr['clip_fraction']:.2%}",
                  f"binds at KL ~ {ref['clip_range_binds_at_kl']:.1e} for this D")
    table.add_row(f"delta for {tr['target_fraction']:.0%} masked", _threshold_text(tr["delta_for_target"]), "on these steps' KLs")
    table.add_row(f"eps for {tr['target_fraction']:.0%} clipped", _threshold_text(tr["clip_range_for_target"]), "on these steps' ratios")
    table.add_row("reference-equivalent delta", f"{ref['delta']:.1e}", "UniRL's tau 1e-5 on bf16 means, as exact KL")
    table.add_row("reference-equivalent eps", f"{ref['clip_range']:.2e}",
                  f"binds at KL {ref['reference_clip_binds_at_kl']:.1e} here, as eps 1e-4 does at SD3.5's D")
    rewards = report["rewards"]
    for key, health in rewards["objectives"].items():
        spread = "n/a" if health["groups_with_spread"] is None else f"{health['groups_with_spread']:.0%}"
        table.add_row(f"reward {key}", spread, f"groups with reward spread; mean {health['mean']:.3f}" if health["mean"] is not None else "never applicable")
    table.add_row("failed scores", f"{rewards['failed_fraction']:.1%}", "samples whose group is dropped")
    table.add_row("throughput", f"{rewards['rollout_images_per_s']:.1f} img/s", f"rollout; rewards {rewards['reward_images_per_s']:.1f} img/s")
    return table
