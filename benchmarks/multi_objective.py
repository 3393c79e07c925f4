"""Multi-objective balance: does Flow-DPPO lift every objective of a mixture, or only the easy ones, vs GRPO?

Three objectives on the built-in tiny model: the toy verifier's count and position scores and JPEG
compressibility (-kB at quality 95, DDPO's objective). All three vary within a prompt group on the base model
(measured on 4 x 8 quickstart rollouts: group std 0.21 count, 0.30 position, 0.073 kB compressibility), and they
pull apart: a flatter, emptier image compresses better but scores worse on count and position.

Each run is the pinned quickstart (quickstart_runs.BASE_OVERRIDES: 100 steps, 4 prompts x 8, per-objective
group-normalised advantages) with these three rewards at one of three weightings (the weights sum to 3):
verifier-heavy (1.375, 1.375, 0.25), equal (1, 1, 1) and compression-heavy (0.5, 0.5, 2), under Flow-DPPO (the
quickstart's delta 5e-5) and GRPO (clip 1e-4). Probes (benchmarks/suites/multi_objective.yaml: 24 fixed training
prompts x 4 ODE images for the objectives, held-out prompts for colour and overall, KL to base) run at 0/50/100.

Normalised gain of objective k = (probe_k at step 100 - probe_k at step 0) / sd_k, where sd_k is the standard
deviation of objective k over the base model's 96 probe images: a gain of 1 moves the mean by one base-model
spread, whatever the objective's unit. The worst objective's normalised gain is the balance number.

    python -m benchmarks.multi_objective                          # 6 runs (3 weightings x 2 algorithms, seed 0)
    python -m benchmarks.multi_objective --seeds 0 1 2 --jobs 2   # the committed results: 18 runs, two at a time
    python -m benchmarks.multi_objective --table     # print the results as markdown

Measured: 18 runs (seeds 0, 1, 2) in 31 min with --jobs 2 on an otherwise idle 2-core machine; seed 0's runs
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

from mogen.evaluation.runs import load_metrics

SUITE = ROOT / "benchmarks" / "suites" / "multi_objective.yaml"
OUT_JSON = ROOT / "benchmarks" / "results" / "multi_objective.json"
OUT_PNG = ROOT / "benchmarks" / "results" / "multi_objective.png"
OBJECTIVES = {  # label -> (scorer, kwargs as YAML)
    "count": ("toy_verifier", "{attribute: count}"),
    "position": ("toy_verifier", "{attribute: position}"),
    "compressibility": ("compressibility", "{}"),
}
WEIGHTINGS = {"verifier-heavy": (1.375, 1.375, 0.25), "equal": (1.0, 1.0, 1.0), "compression-heavy": (0.5, 0.5, 2.0)}
ALGORITHMS = {"dppo": [], "grpo_clip1e-4": ["algorithm.name=grpo", "algorithm.clip_range=1.0e-4"]}
PROBES = [f"trained/{k}" for k in OBJECTIVES] + ["heldout/color", "heldout/overall", "kl_base/kl"]
NOTES = [
    ("normalised_gain[k] = (probe trained/k at 100 - at 0) / base_sd[k]; base_sd[k] = std of objective k over the"
    " base model's probe images (24 training prompts x 4, ODE, seed 1234; position only on position prompts)."),
    "worst_gain: the smallest normalised gain of the three objectives in a run (the balance number).",
    "compressibility is -kB of the 32x32 image as JPEG at quality 95: higher (less negative) is better.",
    f"smoothed_rewards: the per-objective training reward averaged over the last {WINDOW} steps at step 100.",
    ("GRPO uses the weighted sum of the per-objective group-normalised advantages; DPPO has one term and one mask"
    " per objective (mogen.objectives), all at the quickstart's delta 5e-5."),
]


def reward_overrides(weights: tuple[float, ...]) -> str:
    specs = [f"{{name: {name}, label: {label}, weight: {w}, kwargs: {kwargs}}}" for (label, (name, kwargs)), w in zip(OBJECTIVES.items(), weights)]
    return f"rewards=[{', '.join(specs)}]"


def run_overrides(algorithm: str, weighting: str) -> list[str]:
    return [reward_overrides(WEIGHTINGS[weighting]), f"eval.suites=[{SUITE}]", *ALGORITHMS[algorithm]]


def base_spread() -> dict[str, dict[str, float]]:
    """Mean and std over the base model's probe images of each probe metric (no adapter: the model as shipped)."""
    from mogen.config import load_recipe
    from mogen.evaluation.probes import run_suite
    from mogen.evaluation.suite import load_suite
    from mogen.models.loading import load_policy

    recipe = load_recipe(RECIPE, BASE_OVERRIDES)
    policy = load_policy(recipe.model, device=torch.device("cpu"), guidance_scale=recipe.sampler.guidance_scale)
    result = run_suite(policy, load_suite(SUITE), with_grids=False)
    return {key: {"mean": m.mean(), "sd": float(np.nanstd(m.values)), "images": int(np.isfinite(m.values).sum())}
            for key, m in result.metrics.items()}


def summarize(run_dir: Path, spread: dict) -> dict:
    s = load_metrics(run_dir)
    step = s["step"]
    probes = {str(at): {k: float(np.nanmax(s[f"probe/{k}"][step == at])) for k in PROBES} for at in PROBE_STEPS}
    last = str(PROBE_STEPS[-1])
    gains = {k: (probes[last][f"trained/{k}"] - probes["0"][f"trained/{k}"]) / spread[f"trained/{k}"]["sd"] for k in OBJECTIVES}
    worst = min(gains, key=gains.get)
    rows = np.isfinite(s["reward/total"])
    curves = training_curves(run_dir, tuple(f"reward/{k}" for k in OBJECTIVES) + ("kl/ref",))
    return {
        "probes": probes,
        "normalised_gain": gains,
        "worst_gain": gains[worst],
        "worst_objective": worst,
        "heldout_color_change": probes[last]["heldout/color"] - probes["0"]["heldout/color"],
        "heldout_overall_change": probes[last]["heldout/overall"] - probes["0"]["heldout/overall"],
        "smoothed_rewards": {k: float(curves[f"reward/{k}"][-1]) for k in OBJECTIVES},
        "kl_ref_end": float(curves["kl/ref"][-1]),
        "mean_mask_or_clip_fraction": float(np.mean(s["mask_fraction"][rows])),
        "mask_fraction_per_objective": {k: float(np.mean(s[f"update/mask_fraction/{k}"][rows]))
                                        for k in OBJECTIVES if f"update/mask_fraction/{k}" in s},
    }


def collect(work_dir: Path, seeds: list[int], done: dict, spread: dict, jobs: int) -> dict:
    earlier = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"runs": {}}
    results = {"recipe": str(RECIPE.relative_to(ROOT)), "base_overrides": BASE_OVERRIDES, "suite": str(SUITE.relative_to(ROOT)),
               "machine": machine(jobs), "notes": NOTES, "weightings": {k: dict(zip(OBJECTIVES, w)) for k, w in WEIGHTINGS.items()},
               "base_spread": spread, "runs": {}}
    for algorithm in ALGORITHMS:
        for weighting in WEIGHTINGS:
            for seed in seeds:
                name = f"{algorithm}/{weighting}/seed{seed}"
                if not finished(work_dir / name):
                    continue
                info = done.get(name) or tuple(earlier["runs"].get(name, {}).get(k) for k in ("wall_seconds", "git_commit"))
                results["runs"][name] = {"algorithm": algorithm, "weighting": weighting, "seed": seed,
                                         "overrides": run_overrides(algorithm, weighting), **summarize(work_dir / name, spread),
                                         "wall_seconds": info[0], "git_commit": info[1]}
    results["per_setting"] = {}  # algorithm/weighting -> mean +- std over its seeds
    for algorithm in ALGORITHMS:
        for weighting in WEIGHTINGS:
            runs = [r for r in results["runs"].values() if r["algorithm"] == algorithm and r["weighting"] == weighting]
            if runs:
                results["per_setting"][f"{algorithm}/{weighting}"] = {
                    "algorithm": algorithm, "weighting": weighting, "seeds": [r["seed"] for r in runs],
                    "normalised_gain": {k: mean_std([r["normalised_gain"][k] for r in runs]) for k in OBJECTIVES},
                    "worst_gain": mean_std([r["worst_gain"] for r in runs]),
                    "heldout_color_change": mean_std([r["heldout_color_change"] for r in runs]),
                    "kl_base_end": mean_std([r["probes"][str(PROBE_STEPS[-1])]["kl_base/kl"] for r in runs]),
                }
    return results


def plot(results: dict, path: Path) -> None:
    """Left: Pareto view, one point per (algorithm, weighting) = mean over seeds (bars: std), seeds as small dots.
    Right: per-objective mean gains per setting, the black line its mean worst gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def verifier_gain(gains: dict) -> float:
        return float(np.mean([gains["count"], gains["position"]]))

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"dppo": "o", "grpo_clip1e-4": "s"}
    settings = results["per_setting"]
    for i, algorithm in enumerate(ALGORITHMS):
        mine = [v for v in settings.values() if v["algorithm"] == algorithm]
        runs = [r for r in results["runs"].values() if r["algorithm"] == algorithm]
        left.scatter([verifier_gain(r["normalised_gain"]) for r in runs], [r["normalised_gain"]["compressibility"] for r in runs],
                     color=f"C{i}", marker=markers[algorithm], s=12, alpha=0.4)
        xs = [verifier_gain({k: v["normalised_gain"][k]["mean"] for k in OBJECTIVES}) for v in mine]  # linear: = mean over seeds
        ys = [v["normalised_gain"]["compressibility"]["mean"] for v in mine]
        yerr = [v["normalised_gain"]["compressibility"]["std"] or 0.0 for v in mine]
        left.errorbar(xs, ys, yerr=yerr, fmt="-", marker=markers[algorithm], color=f"C{i}", ms=9, capsize=3,
                      label=f"{algorithm} (mean over seeds)")
        for v, x, y in zip(mine, xs, ys):
            left.annotate(v["weighting"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    left.scatter([0], [0], color="black", marker="x", label="base model")
    left.axhline(0, color="grey", lw=0.5)
    left.axvline(0, color="grey", lw=0.5)
    left.set(xlabel="verifier gain: mean of count and position (base-sd units)", ylabel="compressibility gain (base-sd units)",
             title="Pareto view: a method's weightings joined; small dots = single seeds")
    left.legend(fontsize=8)
    names = list(settings)
    width = 0.8 / len(OBJECTIVES)
    for j, objective in enumerate(OBJECTIVES):
        right.bar(np.arange(len(names)) + (j - 1) * width, [settings[n]["normalised_gain"][objective]["mean"] for n in names], width,
                  yerr=[settings[n]["normalised_gain"][objective]["std"] or 0.0 for n in names], capsize=2, label=objective,
                  color=f"C{j + 2}")
    right.hlines([settings[n]["worst_gain"]["mean"] for n in names], np.arange(len(names)) - 0.45, np.arange(len(names)) + 0.45,
                 color="black", lw=2, zorder=3, label="worst objective (mean)")
    right.set_xticks(np.arange(len(names)), [n.replace("/", "\n") for n in names], fontsize=7, rotation=15)
    right.axhline(0, color="grey", lw=0.5)
    right.set(ylabel="normalised gain (step 100 - step 0) / base sd", title="Per-objective gains, mean ± std over seeds")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    lines = [("| algorithm | weighting (count, position, compress) | Δ count | Δ position | Δ compress (kB) | normalised gains | worst "
             "| Δ held-out colour | KL to base | mask or clip |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"].values():
        p0, p1 = r["probes"]["0"], r["probes"][str(PROBE_STEPS[-1])]
        deltas = [p1[f"trained/{k}"] - p0[f"trained/{k}"] for k in OBJECTIVES]
        gains = " / ".join(f"{r['normalised_gain'][k]:+.2f}" for k in OBJECTIVES)
        weights = ", ".join(f"{w:g}" for w in results["weightings"][r["weighting"]].values())
        lines.append(f"| {r['algorithm']} | {r['weighting']} ({weights}) s{r['seed']} | {deltas[0]:+.3f} | {deltas[1]:+.3f} | {deltas[2]:+.3f} "
                     f"| {gains} | {r['worst_gain']:+.2f} ({r['worst_objective']}) | {r['heldout_color_change']:+.3f} "
                     f"| {p1['kl_base/kl']:.4f} | {r['mean_mask_or_clip_fraction']:.4f} |")
    lines += ["", "| algorithm | weighting | seeds | count | position | compress | worst | Δ held-out colour | KL to base |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in results["per_setting"].values():
        cells = [format_mean_std(v["normalised_gain"][k], "+.2f") for k in OBJECTIVES] + [format_mean_std(v["worst_gain"], "+.2f"),
                 format_mean_std(v["heldout_color_change"], "+.3f"), format_mean_std(v["kl_base_end"], ".4f")]
        lines.append(f"| {v['algorithm']} | {v['weighting']} | {','.join(map(str, v['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/multi_objective"))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    parser.add_argument("--table", action="store_true", help="print the results JSON as markdown and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(OUT_JSON.read_text())))
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    spread = base_spread()

    def write(done: dict) -> dict:
        results = collect(args.work_dir, args.seeds, done, spread, args.jobs)
        write_results(OUT_JSON, results)
        if results["runs"]:
            plot(results, OUT_PNG)
        return results

    plan = {f"{a}/{w}/seed{s}": (run_overrides(a, w), s, args.work_dir / a / w / f"seed{s}")
            for s in args.seeds for w in WEIGHTINGS for a in ALGORITHMS}
    done = run_plan(plan, args.jobs, write)
    results = write(done)
    results["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    write_results(OUT_JSON, results)
    print(table(results))
    print(f"wrote {OUT_JSON} and {OUT_PNG}")


if __name__ == "__main__":
    main()
