"""Flow-DPPO vs ratio clipping (GRPO), in miniature: the quickstart recipe under each algorithm, over seeds.

Every run is `recipes/quickstart.yaml` pinned by quickstart_runs.BASE_OVERRIDES (builtin:tiny, 100 steps, probes of
recipes/eval/quickstart.yaml at steps 0/50/100, as the quickstart was when these runs were measured) plus each
variant's overrides, trained by `align` on one thread, `--jobs` runs in parallel. From each
run's metrics.jsonl we keep the probes at 0/50/100, the final KL to base, the mean mask (DPPO) or clip
(GRPO) fraction and the seconds per step; the JSON holds every run and the mean +- std over seeds per variant,
and the PNG plots the trained mean over steps and the trained gain against KL to base.

    python -m benchmarks.compare_algorithms            # all 18 runs: ~35 min with --jobs 2 on 2 free cores
                                                       # (measured: 190-270 s per run on one thread, --jobs 1, load 4-5)
    python -m benchmarks.compare_algorithms --quick    # seed 0 of dppo and grpo only
    python -m benchmarks.compare_algorithms --only dppo_cps --seeds 0 1 2   # finished runs are reused

(Run it as a script: in a venv with fairscale installed, `python -m benchmarks...` imports fairscale's own
top-level `benchmarks` package instead of this folder.)

A run whose metrics.jsonl already reaches the last step is not run again (delete its folder to redo it).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per run, two runs on two cores

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from benchmarks.quickstart_runs import (
    PROBE_STEPS,
    RECIPE,
    ROOT,
    WINDOW,
    finished,
    first_reach,
    machine,
    mean_std,
    run_plan,
    training_curves,
    write_results,
)

from mogen.evaluation.runs import load_metrics

OUT_JSON = ROOT / "benchmarks" / "results" / "compare_algorithms.json"
OUT_PNG = ROOT / "benchmarks" / "results" / "compare_algorithms.png"
PROBES = ["probe/trained/count", "probe/trained/shape", "probe/trained/position", "probe/heldout/color", "probe/kl_base/kl",
          "probe/trained/overall", "probe/heldout/overall"]
TRAINED = PROBES[:3]
# Variants: overrides on top of the quickstart (which is dppo, delta 5e-5, lr 3e-4, 2 minibatches per batch).
# The quickstart's |ratio - 1| reaches about 2e-4 per batch (median of update/ratio_min/max), so GRPO's clip at
# 1e-4 (the published value) already sits at the scale the ratio moves; 2e-4 clips only the tails.
# The DPPO mask at delta 5e-5 never fires in the quickstart (update/kl_max is 3e-6..1e-5): the kl_budget
# variant gives position a budget of 2e-6, inside that range, so its mask acts; dppo_delta2e-6 does so for all
# three objectives (DPPO with a trust region that binds, the counterpart of GRPO's clip at 1e-4).
VARIANTS: dict[str, list[str]] = {
    "dppo": [],
    "grpo_clip1e-4": ["algorithm.name=grpo", "algorithm.clip_range=1.0e-4"],
    "grpo_clip2e-4": ["algorithm.name=grpo", "algorithm.clip_range=2.0e-4"],
    "dppo_cps": ["sampler.kind=cps"],
    "dppo_klbudget_position2e-6": ["rewards.2.kl_budget=2.0e-6"],
    "dppo_delta2e-6": ["algorithm.delta=2.0e-6"],
}
REFERENCE = "grpo_clip1e-4"  # whose final reward the others race to
NOTES = [
    ("mean_mask_or_clip_fraction: DPPO's masked or GRPO's clipped share of sample-steps, averaged over updates and steps;"
    " the first minibatch of each batch is on-policy (ratio 1, KL 0), so at most half of it can fire."),
    ("update_kl_max_median: DPPO's exact per-step KL; for GRPO the one-sample k3 estimate (not comparable)."
    " kl_old_new_median: the exact KL between the policy before and after each batch's update, for both."),
    "dppo_cps keeps delta 5e-5 (not rescaled): update/kl_max_median shows the per-step KL scale under CPS.",
    "seconds_per_step: the trainer's time/rollout_s, reward_s, train_s per step; probes (steps 0/50/100) are extra.",
    ("probes: recipes/eval/quickstart.yaml, 24 fixed prompts x 4 images, ODE, seed 1234; trained/mean is the mean of"
    " count, shape and position; kl_base/kl is the mean per-step KL to the base on held-out prompts."),
    (f"smoothed reward: the training reward/total (sum of the three objectives' mean scores over a step's 32 rollout"
    f" samples, SDE) averaged over the last {WINDOW} steps (640 samples), defined from step {WINDOW} on."),
    (f"steps_to_reach: the first step at which a run's smoothed reward reaches the target = the smoothed reward of"
    f" {REFERENCE} at step 100 with the SAME seed (runs of one seed draw the same prompts at every step); null if"
    " never within 100 steps (summary: mean +- std over the runs that reach it, and how many did)."),
    (f"kl_ref_end / kl_ref_at_reach: the training kl/ref (exact per-step KL of the rollout policy to the base at the"
    f" trained steps, averaged over latent dims) averaged over the same {WINDOW}-step window as the smoothed reward,"
    " at step 100 / at steps_to_reach. Under CPS the per-step std differs, so its KL is on another scale."),
    "heldout_*_change: probe value at step 100 minus step 0 (negative = forgetting).",
    ("runs with git_commit 05cef05 ran two at a time (--jobs 2), later ones one at a time, all on one thread each;"
     " the mogen code they ran differs only in probe refactoring (same numbers)."),
    ("dppo_cps samples its rollouts with CPS, so its training reward (and kl/ref) is measured on other samples than"
     " the SDE variants': it starts higher (smoothed 1.83 at step 20 vs 1.70-1.75) and its steps_to_reach is not"
     " comparable; compare it through the ODE probes (trained mean, held-out)."),
]
SEEDS = {name: [0, 1, 2] for name in VARIANTS}


def summarize(run_dir: Path) -> dict:
    """The numbers of one run, from its metrics.jsonl."""
    s = load_metrics(run_dir)
    step = s["step"]
    probes = {}
    for at in PROBE_STEPS:
        row = {k.removeprefix("probe/"): float(np.nanmax(s[k][step == at])) for k in PROBES}
        row["trained/mean"] = float(np.mean([row[k.removeprefix("probe/")] for k in TRAINED]))
        probes[str(at)] = row
    train_rows = np.isfinite(s["time/train_s"])
    times = {k: float(np.mean(s[f"time/{k}_s"][train_rows])) for k in ("rollout", "reward", "train")}
    times["total"] = sum(times.values())
    return {
        "probes": probes,
        "trained_mean_gain": probes[str(PROBE_STEPS[-1])]["trained/mean"] - probes["0"]["trained/mean"],
        "final_kl_ref": float(s["kl/ref"][train_rows][-1]),
        "mean_mask_or_clip_fraction": float(np.mean(s["mask_fraction"][train_rows])),
        "fraction_of_steps_with_mask_or_clip": float(np.mean(s["mask_fraction"][train_rows] > 0)),
        "update_kl_max_median": float(np.median(s["update/kl_max"][train_rows])),
        "kl_old_new_median": float(np.nanmedian(s["kl/old_new"][train_rows])),  # measured every diagnostics_every steps
        "ratio_abs_dev_median": float(np.median(np.maximum(1 - s["update/ratio_min"], s["update/ratio_max"] - 1)[train_rows])),
        "seconds_per_step": times,
        "trained_mean_curve": {str(at): probes[str(at)]["trained/mean"] for at in PROBE_STEPS},
    }


def reach(run_dir: Path, target: float) -> dict:
    """Steps to reach `target` with the smoothed training reward, and the KL to base there and at the end."""
    curves = training_curves(run_dir)
    at = first_reach(curves["step"], curves["reward/total"], target)
    return {
        "target": target,
        "steps_to_reach": at,
        "kl_ref_at_reach": float(curves["kl/ref"][curves["step"] == at][0]) if at is not None else None,
        "smoothed_reward_end": float(curves["reward/total"][-1]),
        "kl_ref_end": float(curves["kl/ref"][-1]),
        "smoothed_curve": {  # every 5 steps from WINDOW on, for the plot
            "step": curves["step"][WINDOW - 1 :: 5].tolist(),
            "reward": curves["reward/total"][WINDOW - 1 :: 5].round(4).tolist(),
            "kl_ref": curves["kl/ref"][WINDOW - 1 :: 5].tolist(),
        },
    }


def aggregate(runs: dict[int, dict]) -> dict:
    """Mean and std over seeds of the headline numbers."""
    last = str(PROBE_STEPS[-1])
    out = {f"step{at}/{k}": mean_std([r["probes"][str(at)][k] for r in runs.values()]) for at in PROBE_STEPS for k in r_keys()}
    out["trained_mean_gain"] = mean_std([r["trained_mean_gain"] for r in runs.values()])
    out["final_kl_ref"] = mean_std([r["final_kl_ref"] for r in runs.values()])
    out["mean_mask_or_clip_fraction"] = mean_std([r["mean_mask_or_clip_fraction"] for r in runs.values()])
    out["seconds_per_step"] = mean_std([r["seconds_per_step"]["total"] for r in runs.values()])
    for key in ("heldout/color", "heldout/overall"):
        out[f"{key.replace('/', '_')}_change"] = mean_std([r["probes"][last][key] - r["probes"]["0"][key] for r in runs.values()])
    if all("reach" in r for r in runs.values()):
        reached = [r["reach"] for r in runs.values() if r["reach"]["steps_to_reach"] is not None]
        out["smoothed_reward_end"] = mean_std([r["reach"]["smoothed_reward_end"] for r in runs.values()])
        out["kl_ref_end"] = mean_std([r["reach"]["kl_ref_end"] for r in runs.values()])
        out["reached"] = f"{len(reached)}/{len(runs)}"
        out["steps_to_reach"] = mean_std([r["steps_to_reach"] for r in reached]) if reached else None
        out["kl_ref_at_reach"] = mean_std([r["kl_ref_at_reach"] for r in reached]) if reached else None
    return out


def r_keys() -> list[str]:
    return [k.removeprefix("probe/") for k in PROBES] + ["trained/mean"]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.6))
    (left, right), (race, kl_race) = axes
    for i, (name, variant) in enumerate(results["variants"].items()):
        runs = variant["runs"]
        if not runs:
            continue
        color = f"C{i}"
        curves = np.array([[r["trained_mean_curve"][str(at)] for at in PROBE_STEPS] for r in runs.values()])
        mean = curves.mean(0)
        left.plot(PROBE_STEPS, mean, "-o", color=color, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            left.fill_between(PROBE_STEPS, curves.min(0), curves.max(0), color=color, alpha=0.15)
        kls = [r["probes"][str(PROBE_STEPS[-1])]["kl_base/kl"] for r in runs.values()]
        gains = [r["trained_mean_gain"] for r in runs.values()]
        right.scatter(kls, gains, color=color, label=name, s=40)
        right.errorbar(np.mean(kls), np.mean(gains), xerr=np.std(kls), yerr=np.std(gains), color=color, marker="*", ms=14, capsize=3)
        smoothed = [r["reach"]["smoothed_curve"] for r in runs.values() if "reach" in r]
        if smoothed:
            steps = smoothed[0]["step"]
            race.plot(steps, np.mean([c["reward"] for c in smoothed], 0), color=color, label=f"{name} (n={len(smoothed)})")
            kl_race.plot(np.mean([c["reward"] for c in smoothed], 0), 1e3 * np.mean([c["kl_ref"] for c in smoothed], 0), "-", color=color,
                         label=name, marker=".")
    targets = [r["reach"]["target"] for r in results["variants"][REFERENCE]["runs"].values() if "reach" in r]
    if targets:
        for ax in (race, kl_race):
            (ax.axhline if ax is race else ax.axvline)(np.mean(targets), color="grey", ls="--", lw=1,
                                                         label=f"{REFERENCE} final (mean of seeds)")
    race.set(xlabel="step", ylabel=f"training reward/total, mean of last {WINDOW} steps",
             title="Smoothed training reward (mean over seeds)")
    kl_race.set(xlabel=f"smoothed training reward (last {WINDOW} steps)", ylabel="kl/ref (1e-3), same window",
                title="KL to base vs reward along training (mean over seeds)")
    race.legend(fontsize=8)
    kl_race.legend(fontsize=8)
    left.set(xlabel="step", ylabel="trained mean (count, shape, position)", title="Trained mean vs step (band: min-max over seeds)")
    right.set(xlabel="KL to base at step 100 (probe/kl_base/kl)", ylabel="trained mean gain, step 100 - step 0",
              title="Gain vs KL to base (dots: seeds, star: mean +- std)")
    right.axhline(0, color="grey", lw=0.5)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(work_dir: Path, done: dict[str, tuple[float, str]], jobs: int) -> dict:
    """Every finished run under work_dir (this invocation's and earlier ones'), per variant."""
    results = {"recipe": str(RECIPE.relative_to(ROOT)), "machine": machine(jobs), "notes": NOTES, "variants": {}}
    earlier = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"variants": {}}  # reused runs keep their info
    before = earlier.get("machine", {}).get("git_commit")  # files written before runs recorded their own commit
    earlier_done = {f"{n}/seed{s}": (r.get("wall_seconds"), r.get("git_commit", before))
                    for n, v in earlier["variants"].items() for s, r in v["runs"].items()}
    for name in VARIANTS:
        seeds = sorted(int(d.name.removeprefix("seed")) for d in (work_dir / name).glob("seed*"))
        runs = {s: summarize(work_dir / name / f"seed{s}") for s in seeds if finished(work_dir / name / f"seed{s}", 100)}
        for s, r in runs.items():
            r["wall_seconds"], r["git_commit"] = done.get(f"{name}/seed{s}", earlier_done.get(f"{name}/seed{s}", (None, None)))
        results["variants"][name] = {"overrides": VARIANTS[name], "seeds": sorted(runs), "runs": runs}
    targets = {s: training_curves(work_dir / REFERENCE / f"seed{s}")["reward/total"][-1] for s in results["variants"][REFERENCE]["seeds"]}
    for name, variant in results["variants"].items():
        runs = variant.pop("runs")
        for s, r in runs.items():
            if s in targets:
                r["reach"] = reach(work_dir / name / f"seed{s}", float(targets[s]))
        variant["summary"] = aggregate(runs) if runs else None
        variant["runs"] = {str(s): r for s, r in runs.items()}
    return results


def write(results: dict) -> None:
    write_results(OUT_JSON, results)
    plot(results, OUT_PNG)


def table(results: dict) -> str:
    """Markdown: mean +- std over seeds per variant (the numbers the README quotes)."""
    def cell(stat: dict, digits: int = 3, sign: str = "") -> str:
        return f"{stat['mean']:{sign}.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")

    lines = ["| variant | seeds | trained mean 0 / 50 / 100 | gain | count | shape | position | held-out colour | KL to base | kl/ref | mask or clip | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, variant in results["variants"].items():
        sm = variant["summary"]
        if not sm:
            continue
        curve = " / ".join(cell(sm[f"step{at}/trained/mean"]) for at in PROBE_STEPS)
        lines.append(f"| {name} | {','.join(map(str, variant['seeds']))} | {curve} | {cell(sm['trained_mean_gain'], sign='+')} | "
                     + " | ".join(cell(sm[f"step100/{k}"]) for k in ("trained/count", "trained/shape", "trained/position", "heldout/color"))
                     + f" | {cell(sm['step100/kl_base/kl'], 4)} | {cell(sm['final_kl_ref'], 4)} | {cell(sm['mean_mask_or_clip_fraction'], 4)}"
                     + f" | {cell(sm['seconds_per_step'], 2)} |")
    lines += ["", (f"| variant | smoothed reward at 100 | reaches {REFERENCE}'s (same seed) | steps to reach | kl/ref at reach (1e-3) "
              "| kl/ref at 100 (1e-3) | Δ held-out colour | Δ held-out overall |"), "|---|---|---|---|---|---|---|---|"]
    for name, variant in results["variants"].items():
        sm = variant["summary"]
        if not sm or "reached" not in sm:
            continue
        milli = {k: {**sm[k], "mean": 1e3 * sm[k]["mean"], "std": None if sm[k]["std"] is None else 1e3 * sm[k]["std"]}
                 for k in ("kl_ref_at_reach", "kl_ref_end") if sm[k]}
        lines.append(f"| {name} | {cell(sm['smoothed_reward_end'])} | {sm['reached']} "
                     f"| {cell(sm['steps_to_reach'], 0) if sm['steps_to_reach'] else 'never'} "
                     f"| {cell(milli['kl_ref_at_reach'], 2) if 'kl_ref_at_reach' in milli else '-'} | {cell(milli['kl_ref_end'], 2)} "
                     f"| {cell(sm['heldout_color_change'], sign='+')} | {cell(sm['heldout_overall_change'], sign='+')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seed 0 of dppo and grpo_clip1e-4 only")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds of every chosen variant")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/compare_algorithms"))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--table", action="store_true", help="print the results JSON as a markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(OUT_JSON.read_text())))
        return
    torch.set_num_threads(1)
    plan = {"dppo": [0], "grpo_clip1e-4": [0]} if args.quick else dict(SEEDS)
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    if args.seeds:
        plan = {k: args.seeds for k in plan}
    # Seed 0 of every variant first, then the other seeds: a cut-short benchmark still covers each variant.
    jobs = sorted(((name, s) for name, seeds in plan.items() for s in seeds), key=lambda job: job[1])
    started = time.perf_counter()
    done = run_plan({f"{n}/seed{s}": (VARIANTS[n], s, args.work_dir / n / f"seed{s}") for n, s in jobs}, args.jobs,
                    lambda done: write(collect(args.work_dir, done, args.jobs)))
    results = collect(args.work_dir, done, args.jobs)
    results["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    write(results)
    print(table(results))
    print(f"wrote {OUT_JSON} and {OUT_PNG}")


if __name__ == "__main__":
    main()
