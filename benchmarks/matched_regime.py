"""Flow-DPPO vs GRPO at matched regimes: frontier against frontier on the quickstart, and the paper's claims tested.

Why "matched". GRPO clips the one-sample ratio r of a step; log r is averaged over the D latent elements of a sample
(flow_grpo, mogen). With d = mean_new - mean_old and the rollout's noise eps, log r = mean_i(eps_i d_i / std -
d_i^2 / (2 std^2)), so over the noise

    log r ~ N(-KL, 2 KL / D),      KL = mean_i d_i^2 / (2 std^2)   (the exact per-step KL, averaged over dims)

and a clip range eps clips a step when |log r| > eps: it binds once KL ~ min(eps, D eps^2 / 2) (the mean, or the
spread, reaches eps). At SD3.5's D = 16 x 64 x 64 = 65,536 (512 px) the published eps = 1e-4 binds at KL ~ 1e-4; at
builtin:tiny's D = 4 x 8 x 8 = 256 the same eps binds at KL ~ 1.3e-6, about 40x tighter than the quickstart's delta.
Matched here means: the eps that binds on D = 256 where 1e-4 binds on D = 65,536. "Binds at" is made exact as the KL
at which half of the steps are clipped, P(|log r| > eps) = 1/2 under the Gaussian above (`binding_kl`); it is
1.0e-4 for (1e-4, 65,536), and `matched_eps` solves binding_kl(eps, 256) = 1.0e-4: eps = 6.0e-4 (the closed form
sqrt(2 KL / D) gives 8.8e-4, the same order). DPPO's delta is already a KL averaged over dims, which does not depend on
D: its matched value is the exact-KL equivalent of UniRL's tau (recipes/sd35/_dppo.yaml: 5e-6).

What runs (each is recipes/quickstart.yaml pinned by quickstart_runs.BASE_OVERRIDES: builtin:tiny, 4 prompts x 8,
one pass in 2 minibatches, 100 steps, probes at 0/50/100; three seeds each):
  frontier   DPPO delta {1e-6, 5e-6 (matched), 5e-5 (the old quickstart)} and GRPO eps {1e-4 (published), 6e-4
             (matched), 3e-3}: tight, matched and loose for both, so the comparison is frontier against frontier;
  stress     the matched settings at lr x3 (9e-4) and at 2 updates per batch (two passes);
  mixture    the compression-heavy mixture of benchmarks/multi_objective.py (count 0.5, position 0.5,
             compressibility 2; both algorithms hack compressibility there) under DPPO with one global delta, DPPO
             with a budget on compressibility only (kl_budget 1e-6, max_ref_kl 5e-3), and GRPO (matched eps).

Claims, each answered reproduced / not reproduced / inconclusive by `claims()` from the numbers: a difference in
DPPO's favour larger than 2 standard errors (over seeds) is "reproduced", one against it larger than 2 standard
errors "not reproduced", anything else "inconclusive".
  1. higher reward at equal KL: trained-probe gain vs KL to base, the two frontiers compared over their common KL range;
  2. less forgetting at equal training reward: held-out colour change vs trained gain, likewise;
  3. better balance: the worst objective's gain (min of count, shape, position) vs KL to base, likewise;
  4. stability: the gain lost under lr x3, and under 2 updates per batch (paired by seed), DPPO vs GRPO;
  5. per-objective budgets: the worst verifier objective's gain on the mixture, budget vs one global delta.

    python -m benchmarks.matched_regime --jobs 2      # 39 runs: ~70 min on 2 free cores (estimate printed first)
    python -m benchmarks.matched_regime --smoke       # 2 steps, seed 0, one setting per algorithm: a pipeline check
    python -m benchmarks.matched_regime --table       # print the results JSON as markdown

A run whose metrics.jsonl reaches the last step is not run again (delete its folder to redo it). Each write keeps the
numbers of the file it replaces under "history" (and, the first time, those of the unmatched comparison in
compare_algorithms.json / multi_objective.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per run

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from benchmarks.multi_objective import SUITE as MIXTURE_SUITE
from benchmarks.multi_objective import WEIGHTINGS, reward_overrides
from benchmarks.quickstart_runs import (
    BASE_OVERRIDES, ROOT, add_seeded_run_arguments, finished, format_mean_std, machine, mean_std, train_settings, write_results,
)

from mogen.evaluation.runs import load_metrics
from mogen.trust_region import binding_kl, matched_eps

OUT_JSON = ROOT / "benchmarks" / "results" / "matched_regime.json"
D_TINY = 4 * 8 * 8  # builtin:tiny's latent: 4 channels x 8 x 8
D_SD35 = 16 * 64 * 64  # SD3.5 at 512 px: 16 channels x 64 x 64
EPS_REFERENCE = 1e-4  # flow_grpo config/base.py train.clip_range
REFERENCE_DELTA = yaml.safe_load((ROOT / "recipes" / "sd35" / "_dppo.yaml").read_text())["algorithm"]["delta"]
SECONDS_PER_RUN = 205.0  # measured: 199-218 s per 100-step run with --jobs 2 (multi_objective.json, multi_epoch.json)
TWO_PASS_FACTOR = 1.36  # measured: 2 updates per batch, 264-283 s (multi_epoch.json)
TRAINED, MIX_TRAINED = ("count", "shape", "position"), ("count", "position")
NOTES = [
    "trained_mean_gain: mean over the verifier objectives (count, shape, position; mixture: count, position) of the ODE"
    " probe at the last step minus step 0; worst_gain: the smallest of those changes (raw verifier accuracy).",
    "kl_base_end: probe kl_base/kl at the last step (exact per-step KL to the base on held-out prompts).",
    "verdicts: DPPO - GRPO (budget - global for the mixture) beyond 2 standard errors over seeds in DPPO's favour ="
    " reproduced, against it = not reproduced, else inconclusive. Frontiers: each setting's mean over seeds, joined"
    " in x order, compared on 5 points of the common x range; their standard error from the settings' seed spreads.",
    "stability: the change of trained_mean_gain from the matched setting to its stressed twin, paired by seed.",
    "advantages: the quickstart's (per objective, group std, clip 5) for both algorithms.",
]


EPS_MATCHED = float(f"{matched_eps(EPS_REFERENCE, D_SD35, D_TINY):.1e}")  # 6.0e-4
DPPO_DELTAS = [1e-6, REFERENCE_DELTA, 5e-5]
GRPO_EPS = [EPS_REFERENCE, EPS_MATCHED, 3e-3]


def dppo(delta: float) -> list[str]:
    return ["algorithm.name=dppo", f"algorithm.delta={delta}"]


def grpo(eps: float) -> list[str]:
    return ["algorithm.name=grpo", f"algorithm.clip_range={eps}"]


def variants() -> dict[str, dict]:
    """name -> {group, algorithm, overrides, value}: the constraint sweep, the stress tests and the mixture."""
    out = {f"dppo_delta{d:.0e}": {"group": "frontier", "algorithm": "dppo", "value": d, "overrides": dppo(d)} for d in DPPO_DELTAS}
    out |= {f"grpo_eps{e:.0e}": {"group": "frontier", "algorithm": "grpo", "value": e, "overrides": grpo(e)} for e in GRPO_EPS}
    matched = {"dppo": dppo(REFERENCE_DELTA), "grpo": grpo(EPS_MATCHED)}
    for algorithm, overrides in matched.items():
        out[f"{algorithm}_lr3x"] = {"group": "stress", "algorithm": algorithm, "overrides": [*overrides, "optim.lr=9.0e-4"]}
        out[f"{algorithm}_updates2"] = {"group": "stress", "algorithm": algorithm, "overrides": [*overrides, "algorithm.updates_per_batch=2"]}
    mixture = [reward_overrides(WEIGHTINGS["compression-heavy"]), f"eval.suites=[{MIXTURE_SUITE}]"]
    budget = ["rewards.2.kl_budget=1.0e-6", "rewards.2.max_ref_kl=5.0e-3"]  # rewards.2 is compressibility
    out["mix_dppo_global"] = {"group": "mixture", "algorithm": "dppo", "overrides": [*mixture, *matched["dppo"]]}
    out["mix_dppo_budget"] = {"group": "mixture", "algorithm": "dppo", "overrides": [*mixture, *matched["dppo"], *budget]}
    out["mix_grpo"] = {"group": "mixture", "algorithm": "grpo", "overrides": [*mixture, *matched["grpo"]]}
    return out


def step_overrides(steps: int) -> list[str]:
    """Probes at 0, steps / 2 and steps; a short (smoke) run probes only at 0 and at its end."""
    every = steps // 2 if steps >= 10 else steps
    return [f"train.steps={steps}", f"eval.every={every}", f"train.sample_every={every}", f"train.checkpoint_every={every}"]


def estimate_seconds(plan: dict[str, dict], seeds: list[int], steps: int, jobs: int) -> float:
    per_run = [SECONDS_PER_RUN * steps / 100 * (TWO_PASS_FACTOR if "updates2" in name else 1.0) for name in plan for _ in seeds]
    return sum(per_run) / jobs


def summarize(run_dir: Path, mixture: bool) -> dict:
    """A run's numbers from its metrics.jsonl: probe changes from step 0 to the last step, KLs, mask/clip shares."""
    s = load_metrics(run_dir)
    step, last = s["step"], int(np.nanmax(s["step"]))
    trained = MIX_TRAINED if mixture else TRAINED

    def probe(key: str, at: int) -> float:
        return float(np.nanmax(s[f"probe/{key}"][step == at]))

    change = {k: probe(f"trained/{k}", last) - probe(f"trained/{k}", 0) for k in trained}
    if mixture:
        change["compressibility"] = probe("trained/compressibility", last) - probe("trained/compressibility", 0)
    rows = np.isfinite(s["reward/total"])

    def over_steps(key: str, reduce) -> float:  # NaN where the algorithm does not log it (no mask for NFT/AWM)
        values = s[key][rows] if key in s else np.array([])
        values = values[np.isfinite(values)]
        return float(reduce(values)) if len(values) else float("nan")

    return {
        "steps": last,
        "trained_change": change,
        "trained_mean_gain": float(np.mean([change[k] for k in trained])),
        "worst_gain": min(change[k] for k in trained),
        "worst_objective": min(trained, key=change.get),
        "heldout_color_change": probe("heldout/color", last) - probe("heldout/color", 0),
        "heldout_overall_change": probe("heldout/overall", last) - probe("heldout/overall", 0),
        "kl_base_end": probe("kl_base/kl", last),
        "kl_ref_end": float(s["kl/ref"][rows][-1]) if "kl/ref" in s else float("nan"),
        "mask_or_clip_mean": over_steps("mask_fraction", np.mean),
        "mask_or_clip_max": over_steps("mask_fraction", np.max),
        "kl_old_new_median": over_steps("kl/old_new", np.median),
    }


SUMMARY_KEYS = ("trained_mean_gain", "worst_gain", "heldout_color_change", "heldout_overall_change", "kl_base_end",
                "kl_ref_end", "mask_or_clip_mean", "mask_or_clip_max")


def standard_error(stat: dict | None) -> float | None:
    return None if not stat or stat["std"] is None else stat["std"] / math.sqrt(stat["n"])


def verdict(diff: float | None, se: float | None) -> str:
    """In DPPO's favour beyond 2 standard errors: reproduced; against it beyond 2: not reproduced; else inconclusive."""
    if diff is None or se is None or not math.isfinite(diff) or not math.isfinite(se):
        return "inconclusive"
    if diff > 2 * se:
        return "reproduced"
    return "not reproduced" if diff < -2 * se else "inconclusive"


def frontier_gap(points: dict[str, list[dict]], x: str, y: str, a: str = "dppo", b: str = "grpo") -> dict:
    """Compare two frontiers y(x) (one point per setting = mean over seeds, joined in x order) over their common x
    range: the mean of a - b on 5 points of it, and the standard error from the points' seed spreads."""
    curves, errors = {}, {}
    for algorithm in (a, b):
        pts = sorted((p[x]["mean"], p[y]["mean"]) for p in points[algorithm])
        if len(pts) < 2:
            return {"verdict": "inconclusive", "why": f"{algorithm} has {len(pts)} setting(s); a frontier needs 2"}
        curves[algorithm] = np.array(pts)
        ses = [standard_error(p[y]) for p in points[algorithm]]
        errors[algorithm] = None if None in ses else float(np.mean(np.square(ses)))
    lo = max(c[:, 0].min() for c in curves.values())
    hi = min(c[:, 0].max() for c in curves.values())
    if lo >= hi:
        return {"verdict": "inconclusive", "why": f"the frontiers share no {x} range", "range": [lo, hi]}
    grid = np.linspace(lo, hi, 5)
    gaps = np.interp(grid, *curves[a].T) - np.interp(grid, *curves[b].T)
    se = None if None in errors.values() else math.sqrt(errors[a] + errors[b])
    diff = float(gaps.mean())
    return {"verdict": verdict(diff, se), f"{a}_minus_{b}": diff, "se": se, "range": [float(lo), float(hi)],
            "gaps": gaps.round(6).tolist()}


def paired_gap(runs: dict[str, dict[int, dict]], dppo_pair: tuple[str, str], grpo_pair: tuple[str, str], key: str) -> dict:
    """(dppo stressed - dppo base) - (grpo stressed - grpo base) of `key`, each change paired by seed."""
    changes = {}
    for algorithm, (stressed, base) in (("dppo", dppo_pair), ("grpo", grpo_pair)):
        seeds = sorted(set(runs.get(stressed, {})) & set(runs.get(base, {})))
        changes[algorithm] = mean_std([runs[stressed][s][key] - runs[base][s][key] for s in seeds]) if seeds else None
    if None in changes.values():
        return {"verdict": "inconclusive", "why": "missing runs"}
    ses = [standard_error(c) for c in changes.values()]
    diff = changes["dppo"]["mean"] - changes["grpo"]["mean"]
    se = None if None in ses else math.sqrt(sum(e * e for e in ses))
    return {"verdict": verdict(diff, se), "dppo_minus_grpo": diff, "se": se, "dppo_change": changes["dppo"], "grpo_change": changes["grpo"]}


def claims(runs: dict[str, dict[int, dict]], table: dict[str, dict]) -> dict:
    """Every claim's verdict and numbers, from per-run records (name -> seed -> summarize()) and their per-setting
    means (name -> {group, algorithm, key: mean_std})."""
    frontier = {a: [v for v in table.values() if v["group"] == "frontier" and v["algorithm"] == a] for a in ("dppo", "grpo")}
    matched = (f"dppo_delta{REFERENCE_DELTA:.0e}", f"grpo_eps{EPS_MATCHED:.0e}")
    out = {
        "higher_reward_at_equal_kl": frontier_gap(frontier, "kl_base_end", "trained_mean_gain"),
        "less_forgetting_at_equal_reward": frontier_gap(frontier, "trained_mean_gain", "heldout_color_change"),
        "better_worst_objective_at_equal_kl": frontier_gap(frontier, "kl_base_end", "worst_gain"),
        "stability_lr3x": paired_gap(runs, ("dppo_lr3x", matched[0]), ("grpo_lr3x", matched[1]), "trained_mean_gain"),
        "stability_updates2": paired_gap(runs, ("dppo_updates2", matched[0]), ("grpo_updates2", matched[1]), "trained_mean_gain"),
    }
    seeds = sorted(set(runs.get("mix_dppo_budget", {})) & set(runs.get("mix_dppo_global", {})))
    if seeds:
        gain = mean_std([runs["mix_dppo_budget"][s]["worst_gain"] - runs["mix_dppo_global"][s]["worst_gain"] for s in seeds])
        out["budget_keeps_worst_objective"] = {
            "verdict": verdict(gain["mean"], standard_error(gain)), "budget_minus_global": gain["mean"], "se": standard_error(gain),
            "worst_gain": {n: table[n]["worst_gain"] for n in ("mix_dppo_global", "mix_dppo_budget", "mix_grpo") if n in table},
        }
    else:
        out["budget_keeps_worst_objective"] = {"verdict": "inconclusive", "why": "missing runs"}
    return out


def per_setting(runs: dict[str, dict[int, dict]], plan: dict[str, dict]) -> dict[str, dict]:
    return {name: {"group": plan[name]["group"], "algorithm": plan[name]["algorithm"], "value": plan[name].get("value"),
                   "seeds": sorted(seed_runs), **{k: mean_std([r[k] for r in seed_runs.values()]) for k in SUMMARY_KEYS}}
            for name, seed_runs in runs.items() if seed_runs}


def relative(obj):
    """Every path under the repository written relative to it (the JSON is committed)."""
    if isinstance(obj, str):
        return obj.replace(f"{ROOT}/", "")
    if isinstance(obj, dict):
        return {k: relative(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative(v) for v in obj]
    return obj


def earlier_history(path: Path) -> list[dict]:
    """The history to carry: the replaced file's, plus its own numbers; the first time, the unmatched comparison."""
    if path.is_file():
        old = json.loads(path.read_text())
        entry = {k: old[k] for k in ("written_at", "machine", "per_setting", "claims") if k in old}
        return [*old.get("history", []), entry] if old.get("per_setting") else old.get("history", [])
    history = []
    compare = ROOT / "benchmarks" / "results" / "compare_algorithms.json"
    if compare.is_file():
        variants_ = json.loads(compare.read_text())["variants"]
        history.append({"source": "benchmarks/results/compare_algorithms.json", "regime": "unmatched: delta 5e-5 vs eps 1e-4 on D = 256",
                        "per_setting": {n: {k: v["summary"][k] for k in ("trained_mean_gain", "final_kl_ref", "heldout_color_change")}
                                        for n, v in variants_.items() if v.get("summary")}})
    mixture = ROOT / "benchmarks" / "results" / "multi_objective.json"
    if mixture.is_file():
        history.append({"source": "benchmarks/results/multi_objective.json", "regime": "unmatched: delta 5e-5 vs eps 1e-4 on D = 256",
                        "per_setting": {n: {"worst_gain": v["worst_gain"], "normalised_gain": v["normalised_gain"]}
                                        for n, v in json.loads(mixture.read_text())["per_setting"].items()}})
    return history


def collect(work_dir: Path, plan: dict[str, dict], seeds: list[int], steps: int, done: dict, jobs: int, history: list) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    for name, spec in plan.items():
        for seed in seeds:
            run_dir = work_dir / name / f"seed{seed}"
            if finished(run_dir, steps):
                wall, commit = done.get(f"{name}/seed{seed}", (None, None))
                runs.setdefault(name, {})[seed] = {**summarize(run_dir, spec["group"] == "mixture"), "wall_seconds": wall, "git_commit": commit}
    table = per_setting(runs, plan)
    return relative({
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": "recipes/quickstart.yaml", "base_overrides": [*BASE_OVERRIDES, *step_overrides(steps)], "steps": steps,
        "seeds": seeds, "machine": machine(jobs), "notes": NOTES,
        "regime": {"d_tiny": D_TINY, "d_sd35": D_SD35, "eps_reference": EPS_REFERENCE,
                   "binding_kl_reference": binding_kl(EPS_REFERENCE, D_SD35), "eps_matched": EPS_MATCHED,
                   "binding_kl_matched": binding_kl(EPS_MATCHED, D_TINY), "delta_matched": REFERENCE_DELTA,
                   "binding_kl_of_eps_reference_on_tiny": binding_kl(EPS_REFERENCE, D_TINY)},
        "variants": plan,
        "runs": {name: {str(s): r for s, r in seed_runs.items()} for name, seed_runs in runs.items()},
        "per_setting": table,
        "claims": claims(runs, table),
        "history": history,
    })


def plot(results: dict, path: Path) -> None:
    """Left: trained gain vs KL to base (the frontiers); middle: held-out colour change vs trained gain; right: the
    stress and mixture settings' gains (mixture: worst verifier objective)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    table = results["per_setting"]
    for i, algorithm in enumerate(("dppo", "grpo")):
        points = [v for v in table.values() if v["group"] == "frontier" and v["algorithm"] == algorithm]
        for ax, (x, y) in ((left, ("kl_base_end", "trained_mean_gain")), (middle, ("trained_mean_gain", "heldout_color_change"))):
            ordered = sorted(points, key=lambda v: v[x]["mean"])
            ax.errorbar([v[x]["mean"] for v in ordered], [v[y]["mean"] for v in ordered], yerr=[v[y]["std"] or 0.0 for v in ordered],
                        fmt="-o", color=f"C{i}", capsize=3, label=algorithm)
            for v in ordered:
                ax.annotate(f"{v['value']:.0e}", (v[x]["mean"], v[y]["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    left.set(xlabel="KL to base at the end (probe kl_base/kl)", ylabel="trained probe gain (mean of count, shape, position)",
             title="Frontier: reward vs KL (label: delta or eps)")
    middle.set(xlabel="trained probe gain", ylabel="held-out colour change", title="Forgetting vs reward")
    left.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    others = [n for n, v in table.items() if v["group"] != "frontier"]
    key = {n: "worst_gain" if table[n]["group"] == "mixture" else "trained_mean_gain" for n in others}
    right.bar(range(len(others)), [table[n][key[n]]["mean"] for n in others], yerr=[table[n][key[n]]["std"] or 0.0 for n in others],
              color=[f"C{0 if table[n]['algorithm'] == 'dppo' else 1}" for n in others], capsize=3)
    right.set_xticks(range(len(others)), others, rotation=30, fontsize=8)
    right.set(ylabel="trained gain (stress) / worst verifier gain (mix_*)", title="Stress tests and per-objective budgets")
    for ax in (left, middle, right):
        ax.axhline(0, color="grey", lw=0.5)
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_markdown(results: dict) -> str:
    lines = ["| setting | seeds | trained gain | worst objective | held-out colour | KL to base | mask/clip mean (max) |",
             "|---|---|---|---|---|---|---|"]
    for name, v in results["per_setting"].items():
        lines.append(f"| {name} | {','.join(map(str, v['seeds']))} | {format_mean_std(v['trained_mean_gain'], '+.3f')} "
                     f"| {format_mean_std(v['worst_gain'], '+.3f')} | {format_mean_std(v['heldout_color_change'], '+.3f')} "
                     f"| {format_mean_std(v['kl_base_end'], '.4f')} | {v['mask_or_clip_mean']['mean']:.4f} ({v['mask_or_clip_max']['mean']:.3f}) |")
    lines += ["", "| claim | verdict | DPPO - GRPO (or budget - global) | 2 x SE |", "|---|---|---|---|"]
    for name, c in results["claims"].items():
        diff = c.get("dppo_minus_grpo", c.get("budget_minus_global"))
        two_se = "-" if c.get("se") is None else format(2 * c["se"], ".4f")
        lines.append(f"| {name} | {c['verdict']} | {'-' if diff is None else format(diff, '+.4f')} | {two_se} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seeded_run_arguments(parser, "runs/matched_regime", OUT_JSON, "2 steps, seed 0, the matched setting of each algorithm")
    args = parser.parse_args()
    if args.table:
        print(table_markdown(json.loads(args.out.read_text())))
        return
    plan = variants()
    if args.smoke:
        args.steps, args.seeds = 2, [0]
        plan = {k: v for k, v in plan.items() if k in (f"dppo_delta{REFERENCE_DELTA:.0e}", f"grpo_eps{EPS_MATCHED:.0e}")}
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    torch.set_num_threads(1)
    print(f"{len(plan) * len(args.seeds)} runs of {args.steps} steps, {args.jobs} at a time: about "
          f"{estimate_seconds(plan, args.seeds, args.steps, args.jobs) / 60:.0f} min on free cores "
          f"({SECONDS_PER_RUN:.0f} s per 100-step run measured with --jobs 2); matched eps {EPS_MATCHED:.1e}, delta {REFERENCE_DELTA:.0e}",
          flush=True)
    history = earlier_history(args.out)

    def write(done: dict) -> dict:
        results = collect(args.work_dir, plan, args.seeds, args.steps, done, args.jobs, history)
        write_results(args.out, results)
        if results["per_setting"]:
            plot(results, args.out.with_suffix(".png"))
        return results

    results = train_settings(plan, args.seeds, args.work_dir, step_overrides(args.steps), args.jobs, write)
    write_results(args.out, results)
    print(table_markdown(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
