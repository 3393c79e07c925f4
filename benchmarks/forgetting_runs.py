"""Gains and forgetting of two short Flow-DPPO runs on the tiny model, measured by `mogen eval`.

Two runs on the same base, the same seed and the same objectives (toy verifier count + color on the training
split's count prompts), one aggressive (lr 1e-3, one update per batch) and one gentle (lr 3e-4, two updates
per batch so the DPPO mask can act). Each is then evaluated with recipes/eval/toy_forgetting.yaml against the
base on the same seeds; the JSON keeps every metric's base, aligned, delta and 95% CI, plus the runs' reward
gains and final KL to base. The runs also ask for toy_quick probes every 10 steps (logged once the trainer
runs eval suites).

    python -m benchmarks.forgetting_runs --base builtin:tiny      # writes benchmarks/results/forgetting_runs.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch
import yaml

from mogen.config import load_recipe
from mogen.evaluation.report import evaluate
from mogen.evaluation.runs import load_metrics, objectives, start_end
from mogen.models import BUILTIN_TINY, builtin_tiny_path
from mogen.trainer import align

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "forgetting_runs.json"
RUNS = {
    "aggressive_lr1e-3": {"optim": {"lr": 1.0e-3}, "algorithm": {"name": "dppo", "delta": 1.0e-5, "updates_per_batch": 1}},
    "gentle_lr3e-4_2updates": {"optim": {"lr": 3.0e-4}, "algorithm": {"name": "dppo", "delta": 1.0e-5, "updates_per_batch": 2}},
}


def recipe(base: str, steps: int, run_dir: Path, overrides: dict) -> dict:
    return {
        "model": {"name": base},
        "lora": {"rank": 16, "alpha": 32},
        "prompts": {"split": "train", "tasks": ["count"]},
        "rollout": {"prompts_per_batch": 4, "group_size": 8},
        "sampler": {"kind": "sde", "eta": 0.7, "num_steps": 10, "train_window": [0, 5], "train_steps": 3},
        "rewards": [
            {"name": "toy_verifier", "kwargs": {"attribute": "count"}},
            {"name": "toy_verifier", "kwargs": {"attribute": "color"}},
        ],
        "train": {"steps": steps, "seed": 0, "sample_every": steps, "checkpoint_every": steps, "log_with": []},
        "eval": {"suites": [str(ROOT / "recipes" / "eval" / "toy_quick.yaml")], "every": 10},
        "output_dir": str(run_dir),
        **overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="builtin:tiny", help="tiny-model folder or builtin:tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/forgetting_benchmark"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"base": args.base, "steps": args.steps, "suite": "recipes/eval/toy_forgetting.yaml", "runs": {}}
    # A snapshot of the base: a weights update while the benchmark runs must not mix two models in one result.
    base = args.work_dir / "base"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(builtin_tiny_path() if args.base == BUILTIN_TINY else Path(args.base), base)
    if args.base == BUILTIN_TINY:  # which shipped weights: the commit that last changed them
        log = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--", "mogen/assets/tiny"], capture_output=True, text=True)
        results["base_weights_commit"] = log.stdout.strip()[:120] or "unknown (not a git checkout)"
    for name, overrides in RUNS.items():
        run_dir = args.work_dir / name
        path = args.work_dir / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe(str(base.resolve()), args.steps, run_dir, overrides), sort_keys=False))
        started = time.perf_counter()
        align(load_recipe(path))
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        report, _ = evaluate(ROOT / "recipes" / "eval" / "toy_forgetting.yaml", None, None, run_dir, None, "cpu")
        series = load_metrics(run_dir)
        results["runs"][name] = {
            "recipe": overrides,
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(time.perf_counter() - started, 1),
            "reward_start_end": {k: start_end(series[k]) for k in [*objectives(series), "reward/total"]},
            "kl_ref_start_end": start_end(series["kl/ref"]),
            "eval": {k: {f: row[f] for f in ("base", "aligned", "delta", "ci_low", "ci_high", "verdict")} for k, row in report["metrics"].items()},
            "skipped": report["notes"],
        }
        print(name, json.dumps(results["runs"][name], indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
