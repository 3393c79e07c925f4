"""DiffusionNFT and AWM against Flow-DPPO and GRPO on the matched-regime quickstart: frontier, forgetting, balance, cost.

The likelihood-free algorithms (`algorithm.name: nft | awm`, mogen/nft.py, mogen/awm.py) have no ratio or KL
threshold to match, so they are compared as matched_regime.py compares DPPO and GRPO: frontier against frontier.
Each gets two settings of the knob that sets its step size, and every point is a mean over three seeds:

  nft   beta 1.0 (DiffusionNFT config/nft.py, SD3.5 GenEval/PickScore) and 0.1 (the same file's OCR and
        multi-reward runs): beta is NFT's implicit trust region, an inverse step size;
  awm   lr 3e-4 (AWM config/dgx_awm.py, and the quickstart's) and 1e-4: AWM's ratio clip (1.0) rarely binds,
        so its step size is the learning rate's.

Everything else is the pinned quickstart of matched_regime.py (quickstart_runs.BASE_OVERRIDES, 100 steps, probes at
0/50/100, the same three verifier objectives with per-objective advantages and the same 3 trained times a sample),
so a step of every algorithm costs the same number of trained forwards (NFT adds one no-grad forward of the old
policy per trained time, AWM one for the EMA penalty).

DPPO's and GRPO's frontiers are those of benchmarks/results/matched_regime.json (same overrides, same seeds). Their
matched settings are also trained again here (`dppo_matched`, `grpo_matched`), so that every algorithm's reward per
CPU-minute comes from runs of the same code on the same machine (train_run's timing.json, one thread a run);
the rerun's gains are checked against the committed ones (the runs are deterministic per seed).

Questions, each answered by a number with 2 standard errors over seeds (matched_regime.verdict's rule; the
"reproduced" verdict of a comparison means "in favour of the first algorithm named"):
  1. trained gain at equal KL to base: nft vs dppo, awm vs dppo, nft vs grpo, awm vs grpo (frontiers);
  2. held-out colour change at equal trained gain (forgetting), same pairs;
  3. worst objective's gain at equal KL, same pairs;
  4. trained gain per CPU-minute at each algorithm's reference setting (NFT's efficiency claim).

    python -m benchmarks.forward_rl --jobs 2     # 18 runs, ~40 min on 2 free cores
    python -m benchmarks.forward_rl --smoke      # 2 steps, seed 0, one setting per algorithm
    python -m benchmarks.forward_rl --table      # print the results JSON as markdown
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per run

import argparse
import json
import math
import time
from pathlib import Path

import torch
from benchmarks.matched_regime import (
    EPS_MATCHED, OUT_JSON as MATCHED_JSON, REFERENCE_DELTA, dppo, frontier_gap, grpo, standard_error, step_overrides,
    summarize, verdict,
)
from benchmarks.quickstart_runs import (
    BASE_OVERRIDES, ROOT, add_seeded_run_arguments, finished, format_mean_std, machine, mean_std, run_cpu_seconds, train_settings,
    write_results,
)

OUT_JSON = ROOT / "benchmarks" / "results" / "forward_rl.json"
SECONDS_PER_RUN = 230.0  # estimate for a 100-step run with --jobs 2 (DPPO: 205 s, matched_regime.py)
SUMMARY_KEYS = ("trained_mean_gain", "worst_gain", "heldout_color_change", "kl_base_end", "cpu_minutes", "gain_per_cpu_minute")
NEW = ("nft", "awm")
BASELINES = ("dppo", "grpo")
REFERENCE_SETTING = {"nft": "nft_beta1e+00", "awm": "awm_lr3e-04", "dppo": "dppo_matched", "grpo": "grpo_matched"}


def nft(beta: float) -> list[str]:
    return ["algorithm.name=nft", f"algorithm.nft.beta={beta}"]


def awm(lr: float) -> list[str]:
    return ["algorithm.name=awm", f"optim.lr={lr}"]


def variants() -> dict[str, dict]:
    """name -> {algorithm, value, overrides}: two settings each of NFT and AWM, and the matched DPPO/GRPO reruns."""
    out = {f"nft_beta{b:.0e}": {"algorithm": "nft", "value": b, "overrides": nft(b)} for b in (1.0, 0.1)}
    out |= {f"awm_lr{lr:.0e}": {"algorithm": "awm", "value": lr, "overrides": awm(lr)} for lr in (3e-4, 1e-4)}
    out["dppo_matched"] = {"algorithm": "dppo", "value": REFERENCE_DELTA, "overrides": dppo(REFERENCE_DELTA)}
    out["grpo_matched"] = {"algorithm": "grpo", "value": EPS_MATCHED, "overrides": grpo(EPS_MATCHED)}
    return out


def run_record(run_dir: Path) -> dict:
    """matched_regime's summary of a run, plus its CPU minutes and trained gain per CPU-minute."""
    record = summarize(run_dir, mixture=False)
    cpu = run_cpu_seconds(run_dir)
    record["cpu_minutes"] = None if cpu is None else cpu / 60
    record["gain_per_cpu_minute"] = None if cpu is None else record["trained_mean_gain"] / (cpu / 60)
    return record


def per_setting(runs: dict[str, dict[int, dict]], plan: dict[str, dict]) -> dict[str, dict]:
    table = {}
    for name, seed_runs in runs.items():
        row = {"algorithm": plan[name]["algorithm"], "value": plan[name]["value"], "seeds": sorted(seed_runs)}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in seed_runs.values() if r.get(key) is not None]
            row[key] = mean_std(values) if values else None
        table[name] = row
    return table


def baseline_frontiers() -> dict[str, list[dict]]:
    """DPPO's and GRPO's frontier points (per-setting means over seeds) from the committed matched-regime results."""
    matched = json.loads(MATCHED_JSON.read_text())["per_setting"]
    return {a: [v for v in matched.values() if v["group"] == "frontier" and v["algorithm"] == a] for a in BASELINES}


def comparisons(table: dict[str, dict]) -> dict:
    """Questions 1-3 for every (new, baseline) pair, and question 4 for every algorithm against DPPO."""
    points = baseline_frontiers()
    points |= {a: [v for v in table.values() if v["algorithm"] == a] for a in NEW}
    out = {}
    for new in NEW:
        for base in BASELINES:
            out[f"{new}_vs_{base}"] = {
                "gain_at_equal_kl": frontier_gap(points, "kl_base_end", "trained_mean_gain", new, base),
                "forgetting_at_equal_gain": frontier_gap(points, "trained_mean_gain", "heldout_color_change", new, base),
                "worst_objective_at_equal_kl": frontier_gap(points, "kl_base_end", "worst_gain", new, base),
            }
    reference = table.get(REFERENCE_SETTING["dppo"], {}).get("gain_per_cpu_minute")
    efficiency = {}
    for algorithm, name in REFERENCE_SETTING.items():
        stat = table.get(name, {}).get("gain_per_cpu_minute")
        if stat is None or reference is None:
            efficiency[algorithm] = {"verdict": "inconclusive", "why": "missing runs"}
            continue
        diff = stat["mean"] - reference["mean"]
        ses = [standard_error(stat), standard_error(reference)]
        se = None if None in ses else math.sqrt(sum(e * e for e in ses))
        efficiency[algorithm] = {"setting": name, "gain_per_cpu_minute": stat, "cpu_minutes": table[name]["cpu_minutes"],
                                 "minus_dppo": diff, "se": se, "verdict": "-" if algorithm == "dppo" else verdict(diff, se)}
    out["gain_per_cpu_minute"] = efficiency
    return out


def rerun_check(table: dict[str, dict]) -> dict:
    """The matched DPPO/GRPO reruns against the committed matched-regime numbers (same seeds: equal if the code's
    arithmetic did not change since)."""
    committed = json.loads(MATCHED_JSON.read_text())["per_setting"]
    pairs = {"dppo_matched": f"dppo_delta{REFERENCE_DELTA:.0e}", "grpo_matched": f"grpo_eps{EPS_MATCHED:.0e}"}
    return {name: {"rerun": table[name]["trained_mean_gain"], "committed": committed[old]["trained_mean_gain"], "committed_setting": old}
            for name, old in pairs.items() if name in table and old in committed}


def collect(work_dir: Path, plan: dict[str, dict], seeds: list[int], steps: int, done: dict, jobs: int) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    for name in plan:
        for seed in seeds:
            run_dir = work_dir / name / f"seed{seed}"
            if finished(run_dir, steps):
                wall, commit = done.get(f"{name}/seed{seed}", (None, None))
                runs.setdefault(name, {})[seed] = {**run_record(run_dir), "wall_seconds": wall, "git_commit": commit}
    table = per_setting(runs, plan)
    return {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": "recipes/quickstart.yaml", "base_overrides": [*BASE_OVERRIDES, *step_overrides(steps)], "steps": steps,
        "seeds": seeds, "machine": machine(jobs), "baselines": str(MATCHED_JSON.relative_to(ROOT)),
        "variants": plan,
        "runs": {name: {str(s): r for s, r in seed_runs.items()} for name, seed_runs in runs.items()},
        "per_setting": table,
        "comparisons": comparisons(table),
        "rerun_check": rerun_check(table),
    }


def plot(results: dict, path: Path) -> None:
    """Left: trained gain vs KL to base, all four frontiers; middle: held-out colour vs trained gain; right: trained
    gain per CPU-minute at each algorithm's reference setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    points = baseline_frontiers() | {a: [v for v in results["per_setting"].values() if v["algorithm"] == a] for a in NEW}
    for i, (algorithm, pts) in enumerate(points.items()):
        for ax, (x, y) in ((left, ("kl_base_end", "trained_mean_gain")), (middle, ("trained_mean_gain", "heldout_color_change"))):
            ordered = sorted(pts, key=lambda v: v[x]["mean"])
            ax.errorbar([v[x]["mean"] for v in ordered], [v[y]["mean"] for v in ordered], yerr=[v[y]["std"] or 0.0 for v in ordered],
                        fmt="-o", color=f"C{i}", capsize=3, label=algorithm)
            for v in ordered:
                ax.annotate(f"{v['value']:.0e}", (v[x]["mean"], v[y]["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    left.set(xlabel="KL to base at the end (probe kl_base/kl)", ylabel="trained probe gain (mean of count, shape, position)",
             title="Frontier: reward vs KL (label: delta, eps, NFT beta, AWM lr)")
    middle.set(xlabel="trained probe gain", ylabel="held-out colour change", title="Forgetting vs reward")
    left.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    efficiency = {a: e for a, e in results["comparisons"]["gain_per_cpu_minute"].items() if "gain_per_cpu_minute" in e}
    names = list(efficiency)
    right.bar(range(len(names)), [efficiency[a]["gain_per_cpu_minute"]["mean"] for a in names],
              yerr=[efficiency[a]["gain_per_cpu_minute"]["std"] or 0.0 for a in names],
              color=[f"C{list(points).index(a)}" for a in names], capsize=3)
    right.set_xticks(range(len(names)), [f"{a}\n{efficiency[a]['setting']}" for a in names], fontsize=8)
    right.set(ylabel="trained gain per CPU-minute (one thread)", title="Efficiency at the reference settings")
    for ax in (left, middle, right):
        ax.axhline(0, color="grey", lw=0.5)
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_markdown(results: dict) -> str:
    lines = ["| setting | seeds | trained gain | worst objective | held-out colour | KL to base | CPU min | gain / CPU min |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in results["per_setting"].items():
        cpu = "-" if v["cpu_minutes"] is None else format_mean_std(v["cpu_minutes"], ".1f")
        per = "-" if v["gain_per_cpu_minute"] is None else format_mean_std(v["gain_per_cpu_minute"], "+.4f")
        lines.append(f"| {name} | {','.join(map(str, v['seeds']))} | {format_mean_std(v['trained_mean_gain'], '+.3f')} "
                     f"| {format_mean_std(v['worst_gain'], '+.3f')} | {format_mean_std(v['heldout_color_change'], '+.3f')} "
                     f"| {format_mean_std(v['kl_base_end'], '.4f')} | {cpu} | {per} |")
    lines += ["", "| comparison | question | verdict | first - second | 2 x SE |", "|---|---|---|---|---|"]
    for pair, questions in results["comparisons"].items():
        if pair == "gain_per_cpu_minute":
            continue
        for question, c in questions.items():
            diff = next((v for k, v in c.items() if k.endswith("_minus_" + pair.split("_vs_")[1])), None)
            two_se = "-" if c.get("se") is None else format(2 * c["se"], ".4f")
            lines.append(f"| {pair} | {question} | {c['verdict']} | {'-' if diff is None else format(diff, '+.4f')} | {two_se} |")
    for algorithm, e in results["comparisons"]["gain_per_cpu_minute"].items():
        if "minus_dppo" in e and algorithm != "dppo":
            two_se = "-" if e["se"] is None else format(2 * e["se"], ".4f")
            lines.append(f"| {algorithm}_vs_dppo | gain per CPU-minute | {e['verdict']} | {e['minus_dppo']:+.4f} | {two_se} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seeded_run_arguments(parser, "runs/forward_rl", OUT_JSON, "2 steps, seed 0, each algorithm's reference setting")
    args = parser.parse_args()
    if args.table:
        print(table_markdown(json.loads(args.out.read_text())))
        return
    plan = variants()
    if args.smoke:
        if args.out == OUT_JSON:
            parser.error("--smoke: give --out (smoke numbers must not replace the committed results)")
        args.steps, args.seeds = 2, [0]
        plan = {k: v for k, v in plan.items() if k in REFERENCE_SETTING.values()}
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    torch.set_num_threads(1)
    runs = len(plan) * len(args.seeds)
    print(f"{runs} runs of {args.steps} steps, {args.jobs} at a time: about "
          f"{SECONDS_PER_RUN * args.steps / 100 * runs / args.jobs / 60:.0f} min on free cores", flush=True)

    def write(done: dict) -> dict:
        results = collect(args.work_dir, plan, args.seeds, args.steps, done, args.jobs)
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
