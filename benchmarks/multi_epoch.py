"""Multi-epoch: several passes over each rollout (`algorithm.updates_per_batch` 1, 2, 4) under GRPO and Flow-DPPO.

Reusing a batch is where a trust region has work to do: after the first pass the policy has moved, the ratio
drifts from 1, and GRPO's clip or DPPO's mask decides how far later passes may push. The paper reports that
GRPO degrades with more epochs and DPPO does not. Here every run is the pinned quickstart
(quickstart_runs.BASE_OVERRIDES: 100 steps, 2 minibatches per pass, lr 3e-4) under Flow-DPPO (delta 5e-5) or
GRPO (clip 1e-4), with updates_per_batch 2 or 4; the updates_per_batch=1 runs are compare_algorithms' `dppo`
and `grpo_clip1e-4` runs (same recipe, same seeds), read from its work dir, not rerun.

Reported per run: trained-mean probe gain (step 100 - 0), KL to base (probe at 100 and the training kl/ref),
held-out colour change, the mean mask/clip fraction, the exact KL each batch's update moved the policy
(kl_old_new_median), and stability: the smoothed training reward's largest drop from its running maximum
(max_drawdown) and its change from step 20 to 100 (a run "collapses" if that change is negative, i.e. it ends
below where it started).

    python -m benchmarks.multi_epoch                 # 4 runs (2 algorithms x upb 4, 2, seed 0), one at a time
    python -m benchmarks.multi_epoch --seeds 0 1 2   # more seeds; finished runs are reused
    python -m benchmarks.multi_epoch --table

Measured: 12 runs (upb 2 and 4, seeds 0, 1, 2) in 33 min with --jobs 2 on an otherwise idle 2-core machine; seed 0
repeated bit for bit the numbers of an earlier invocation.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per run

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from benchmarks.compare_algorithms import OUT_JSON as COMPARE_JSON
from benchmarks.compare_algorithms import VARIANTS, summarize
from benchmarks.quickstart_runs import (
    BASE_OVERRIDES,
    PROBE_STEPS,
    RECIPE,
    ROOT,
    WINDOW,
    finished,
    format_mean_std,
    machine,
    mean_std,
    run_plan,
    training_curves,
    write_results,
)

OUT_JSON = ROOT / "benchmarks" / "results" / "multi_epoch.json"
OUT_PNG = ROOT / "benchmarks" / "results" / "multi_epoch.png"
ALGORITHMS = ["dppo", "grpo_clip1e-4"]  # compare_algorithms variant names: their overrides and their upb=1 runs
UPDATES = [1, 2, 4]
NOTES = [
    ("updates_per_batch=1 runs are compare_algorithms' runs of the same algorithm and seed (work dir"
    " runs/compare_algorithms); the others live under runs/multi_epoch/<algorithm>/upb<n>/seed<s>."),
    ("mask_or_clip_fraction: DPPO's masked or GRPO's clipped share of sample-steps over all minibatches of all passes;"
    " only the first minibatch of the first pass is exactly on-policy."),
    (f"stability: smoothed = training reward/total averaged over the last {WINDOW} steps; max_drawdown = max over"
    f" steps of (running max of smoothed - smoothed); change_20_to_100 = smoothed at 100 - smoothed at {WINDOW}."),
    "kl_old_new_median: median over steps of the exact KL (per dim) between the policy before and after a batch's update.",
]


def run_dir(work_dir: Path, compare_dir: Path, algorithm: str, updates: int, seed: int) -> Path:
    return compare_dir / algorithm / f"seed{seed}" if updates == 1 else work_dir / algorithm / f"upb{updates}" / f"seed{seed}"


def stability(path: Path) -> dict:
    reward = training_curves(path)["reward/total"]
    defined = reward[np.isfinite(reward)]
    return {"max_drawdown": float(np.max(np.maximum.accumulate(defined) - defined)),
            "change_20_to_100": float(defined[-1] - defined[0]), "smoothed_reward_end": float(defined[-1])}


def collect(work_dir: Path, compare_dir: Path, seeds: list[int], done: dict, jobs: int) -> dict:
    earlier = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"runs": {}}
    compare = json.loads(COMPARE_JSON.read_text())["variants"] if COMPARE_JSON.is_file() else {}
    results = {"recipe": str(RECIPE.relative_to(ROOT)), "base_overrides": BASE_OVERRIDES, "machine": machine(jobs), "notes": NOTES,
               "runs": {}, "summary": {}}
    for algorithm in ALGORITHMS:
        for updates in UPDATES:
            for seed in seeds:
                path = run_dir(work_dir, compare_dir, algorithm, updates, seed)
                if not finished(path):
                    continue
                name = f"{algorithm}/upb{updates}/seed{seed}"
                if updates == 1:
                    info = tuple(compare.get(algorithm, {}).get("runs", {}).get(str(seed), {}).get(k) for k in ("wall_seconds", "git_commit"))
                else:
                    info = done.get(name) or tuple(earlier["runs"].get(name, {}).get(k) for k in ("wall_seconds", "git_commit"))
                r = summarize(path)
                last = str(PROBE_STEPS[-1])
                results["runs"][name] = {
                    "algorithm": algorithm, "updates_per_batch": updates, "seed": seed, "run_dir": str(path),
                    "overrides": [*VARIANTS[algorithm], f"algorithm.updates_per_batch={updates}"],
                    "trained_mean_gain": r["trained_mean_gain"],
                    "kl_base_probe_end": r["probes"][last]["kl_base/kl"],
                    "kl_ref_end": float(training_curves(path)["kl/ref"][-1]),
                    "heldout_color_change": r["probes"][last]["heldout/color"] - r["probes"]["0"]["heldout/color"],
                    "heldout_overall_change": r["probes"][last]["heldout/overall"] - r["probes"]["0"]["heldout/overall"],
                    "mask_or_clip_fraction": r["mean_mask_or_clip_fraction"],
                    "kl_old_new_median": r["kl_old_new_median"],
                    "ratio_abs_dev_median": r["ratio_abs_dev_median"],
                    "seconds_per_step": r["seconds_per_step"]["total"],
                    "trained_mean_curve": r["trained_mean_curve"],
                    **stability(path),
                    "wall_seconds": info[0], "git_commit": info[1],
                }
            runs = [r for r in results["runs"].values() if r["algorithm"] == algorithm and r["updates_per_batch"] == updates]
            if runs:
                keys = ("trained_mean_gain", "kl_base_probe_end", "kl_ref_end", "heldout_color_change", "mask_or_clip_fraction",
                        "kl_old_new_median", "max_drawdown", "change_20_to_100", "seconds_per_step")
                results["summary"][f"{algorithm}/upb{updates}"] = {
                    "seeds": [r["seed"] for r in runs],
                    **{k: mean_std([r[k] for r in runs]) for k in keys},
                    "collapsed": sum(r["change_20_to_100"] < 0 for r in runs),
                }
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("trained_mean_gain", "trained mean gain (step 100 - 0)"), ("kl_base_probe_end", "KL to base at step 100 (probe)"),
              ("heldout_color_change", "held-out colour change"), ("mask_or_clip_fraction", "mask (DPPO) / clip (GRPO) fraction")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for i, algorithm in enumerate(ALGORITHMS):
        for ax, (key, label) in zip(axes, panels):
            xs, ys = [], []
            for r in results["runs"].values():
                if r["algorithm"] == algorithm:
                    xs.append(r["updates_per_batch"] * (1.03 if i else 0.97))
                    ys.append(r[key])
            ax.scatter(xs, ys, color=f"C{i}", alpha=0.6, s=25)
            means = [(u, results["summary"][f"{algorithm}/upb{u}"][key]["mean"]) for u in UPDATES if f"{algorithm}/upb{u}" in results["summary"]]
            if means:
                ax.plot(*zip(*means), "-o", color=f"C{i}", label=algorithm)
            ax.set(xscale="log", xticks=UPDATES, xticklabels=[str(u) for u in UPDATES], xlabel="updates_per_batch", title=label)
    axes[0].legend(fontsize=8)
    for ax in axes[:3]:
        ax.axhline(0, color="grey", lw=0.5)
    fig.suptitle("Multi-epoch: dots are seeds, lines the mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    lines = [("| algorithm | upb | seeds | gain | KL to base (probe) | kl/ref end (1e-3) | Δ held-out colour | mask or clip | KL moved per batch "
             "| max drawdown | smoothed 20→100 | collapsed | s/step |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, sm in results["summary"].items():
        algorithm, updates = name.split("/upb")
        kl_ref = sm["kl_ref_end"]  # shown in units of 1e-3
        milli = {**kl_ref, "mean": 1e3 * kl_ref["mean"], "std": None if kl_ref["std"] is None else 1e3 * kl_ref["std"]}
        stats = {**sm, "kl_ref_end": milli}
        cells = [format_mean_std(stats[k], fmt) for k, fmt in (
            ("trained_mean_gain", "+.3f"), ("kl_base_probe_end", ".4f"), ("kl_ref_end", ".2f"), ("heldout_color_change", "+.3f"),
            ("mask_or_clip_fraction", ".4f"), ("kl_old_new_median", ".1e"), ("max_drawdown", ".3f"), ("change_20_to_100", "+.3f"))]
        lines.append(f"| {algorithm} | {updates} | {','.join(map(str, sm['seeds']))} | " + " | ".join(cells)
                     + f" | {sm['collapsed']}/{len(sm['seeds'])} | {format_mean_std(sm['seconds_per_step'], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the upb 2 and 4 runs (upb 1 reads every seed there is)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/multi_epoch"))
    parser.add_argument("--compare-dir", type=Path, default=Path("runs/compare_algorithms"), help="where the upb=1 runs are")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--table", action="store_true", help="print the results JSON as markdown and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(OUT_JSON.read_text())))
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds_read = sorted(set(args.seeds) | {0, 1, 2})

    def write(done: dict) -> dict:
        results = collect(args.work_dir, args.compare_dir, seeds_read, done, args.jobs)
        write_results(OUT_JSON, results)
        if results["runs"]:
            plot(results, OUT_PNG)
        return results

    missing_base = [f"{a}/seed{s}" for a in ALGORITHMS for s in args.seeds if not finished(run_dir(args.work_dir, args.compare_dir, a, 1, s))]
    if missing_base:
        print(f"updates_per_batch=1 runs missing (run python -m benchmarks.compare_algorithms first): {missing_base}")
    plan = {f"{a}/upb{u}/seed{s}": ([*VARIANTS[a], f"algorithm.updates_per_batch={u}"], s, run_dir(args.work_dir, args.compare_dir, a, u, s))
            for s in args.seeds for u in reversed(UPDATES[1:]) for a in ALGORITHMS}  # upb 4 first: the strongest test
    done = run_plan(plan, args.jobs, write)
    results = write(done)
    results["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    write_results(OUT_JSON, results)
    print(table(results))
    print(f"wrote {OUT_JSON} and {OUT_PNG}")


if __name__ == "__main__":
    main()
