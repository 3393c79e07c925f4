"""What the quickstart-based benchmarks share: the pinned recipe, how a run is trained, and what a run recorded.

Every benchmark that trains (compare_algorithms, multi_objective, multi_epoch) runs `recipes/quickstart.yaml`
with BASE_OVERRIDES first and its own overrides after. The base pins every field the quickstart sets (100 steps,
probes every 50, the sampler, batch, LoRA, lr, delta, rewards), so the committed results stay those of the
recipe as it was when they were measured, whatever the quickstart later becomes.

Not a benchmark itself: the others import it (`from benchmarks.quickstart_runs import ...`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
STEPS = 100
PROBE_STEPS = [0, 50, 100]
# The quickstart as measured (commit a95ea97): Flow-DPPO, delta 5e-5, 2 minibatches, lr 3e-4, 4 prompts x 8.
BASE_OVERRIDES = [
    "model.name=builtin:tiny", "model.family=tiny",
    "lora.rank=16", "lora.alpha=32",
    "prompts.source=toyworld", "prompts.split=train", "prompts.tasks=[count, position]",
    "sampler.kind=sde", "sampler.eta=0.7", "sampler.num_steps=10", "sampler.train_window=[0, 5]", "sampler.train_steps=3",
    "rollout.prompts_per_batch=4", "rollout.group_size=8",
    "advantage.mode=per_objective",
    "algorithm.name=dppo", "algorithm.delta=5.0e-5", "algorithm.minibatches=2", "algorithm.updates_per_batch=1",
    "algorithm.beta=0.0",
    "optim.lr=3.0e-4",
    f"train.steps={STEPS}", "train.sample_every=50", "train.checkpoint_every=50",
    f"eval.suites=[{ROOT / 'benchmarks' / 'quickstart_probes_4img.yaml'}]", f"eval.every={PROBE_STEPS[1]}",
    (
        "rewards=[{name: toy_verifier, label: count, weight: 1.0, kwargs: {attribute: count}},"
        " {name: toy_verifier, label: shape, weight: 1.0, kwargs: {attribute: shape}},"
        " {name: toy_verifier, label: position, weight: 1.0, kwargs: {attribute: position}}]"
    ),
]


def train_run(overrides: list[str], seed: int, run_dir: Path) -> tuple[float, str]:
    """Train the pinned quickstart with `overrides` on one thread; returns wall-clock seconds and the code's commit,
    and writes both wall and CPU seconds of the run to run_dir/timing.json (CPU time barely moves with the load
    of a shared machine: it is what "per CPU-minute" comparisons divide by).

    Runs in a worker process (benchmarks spawn one per run), so the thread setting is its own.
    """
    from mogen.config import load_recipe
    from mogen.trainer import align

    torch.set_num_threads(1)
    settings = [*BASE_OVERRIDES, *overrides, f"train.seed={seed}", f"output_dir={run_dir}", "train.log_with=[]"]
    started, cpu_started = time.perf_counter(), time.process_time()
    align(load_recipe(RECIPE, settings))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    (run_dir / "timing.json").write_text(json.dumps({"wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}) + "\n")
    return seconds, code_commit()


def run_cpu_seconds(run_dir: Path) -> float | None:
    """The CPU seconds train_run measured for a run (timing.json), or None for a run trained before it recorded them."""
    path = run_dir / "timing.json"
    return json.loads(path.read_text())["cpu_seconds"] if path.is_file() else None


def run_plan(plan: dict[str, tuple[list[str], int, Path]], jobs: int, on_done: Callable[[dict[str, tuple[float, str]]], None]) -> dict:
    """Train every run of `plan` (name -> (overrides, seed, run_dir)) whose run_dir is not finished, `jobs` at a
    time, each in its own spawned process on one thread. Calls on_done(done) after each run, so partial results
    land as runs finish; returns done: name -> (wall seconds, code commit) of the runs trained now."""
    todo = {name: job for name, job in plan.items() if not finished(job[2])}
    done: dict[str, tuple[float, str]] = {}
    if not todo:
        return done
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_run, overrides, seed, run_dir.resolve()): name for name, (overrides, seed, run_dir) in todo.items()}
        for future in as_completed(futures):
            seconds, commit = future.result()
            done[futures[future]] = (round(seconds, 1), commit)
            print(f"done {futures[future]} in {seconds:.0f} s", flush=True)
            on_done(done)
    return done


def add_seeded_run_arguments(parser: argparse.ArgumentParser, work_dir: str, out_json: Path, smoke_help: str) -> None:
    """The command line every settings-x-seeds benchmark shares (matched_regime, forward_rl)."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per run (probes at 0, steps/2, steps; below 10: at 0 and steps)")
    parser.add_argument("--only", nargs="+", help="run only these settings (see variants())")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--work-dir", type=Path, default=Path(work_dir))
    parser.add_argument("--out", type=Path, default=out_json, help="results JSON; the PNG is written beside it")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--table", action="store_true", help="print the results JSON as markdown and exit")


def train_settings(plan: dict[str, dict], seeds: list[int], work_dir: Path, extra_overrides: list[str], jobs: int,
                   write: Callable[[dict], dict]) -> dict:
    """Train every (setting, seed) of `plan` (name -> {"overrides": [...]}) into work_dir/<name>/seed<seed>, every
    setting's seed 0 first, calling write(done) after each run; returns write's last result, with the total wall time."""
    started = time.perf_counter()
    order = sorted(((n, s) for n in plan for s in seeds), key=lambda job: job[1])
    done = run_plan({f"{n}/seed{s}": ([*plan[n]["overrides"], *extra_overrides], s, work_dir / n / f"seed{s}") for n, s in order},
                    jobs, write)
    results = write(done)
    results["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


def code_commit() -> str:
    """The commit of the mogen checkout that is imported (others commit while a benchmark runs: each run records
    its own), with '-dirty' if mogen/ or reward_zoo/ differ from it."""
    import mogen

    where = Path(mogen.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    if not head:
        return "unknown"
    status = subprocess.run(["git", "-C", str(where.parent), "status", "--porcelain", "--", "mogen", "reward_zoo"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return head + ("-dirty" if status else "")


def machine(parallel_runs: int) -> dict:
    import diffusers

    import mogen

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "mogen_source": str(Path(mogen.__file__).parent),
            "git_commit_at_write": code_commit(), "torch_threads_per_run": 1, "parallel_runs": parallel_runs,
            "load_average_at_write": [round(x, 2) for x in os.getloadavg()]}


def write_results(path: Path, results: dict) -> None:
    """Write a benchmark's results as JSON with every path inside the repository written relative to its root
    (the overrides name suites by absolute path at run time; the committed file must not name this machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((json.dumps(results, indent=2) + "\n").replace(f"{ROOT}/", ""))


def finished(run_dir: Path, steps: int = STEPS) -> bool:
    """True if the run's metrics.jsonl reaches `steps` with its last probes (a cut-short run is redone)."""
    from mogen.evaluation.runs import load_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return False
    series = load_metrics(run_dir)
    return bool(np.nanmax(series["step"]) >= steps and np.isfinite(series["probe/trained/count"][series["step"] == steps]).any())


# --- reading a run's per-step training curve --------------------------------------------------------------
# Probes run only at steps 0/50/100, so "when" questions use the per-step training reward (reward/total, the sum of
# the objectives' mean scores over the step's 32 rollout samples), smoothed by a trailing mean: at step s it is the
# mean over steps s-WINDOW+1..s (640 samples), defined from step WINDOW on. Runs of one seed draw the same prompts
# at every step (the seed contract), so comparing variants seed by seed removes the prompt draw from the difference.
WINDOW = 20


def mean_std(values: list[float]) -> dict:
    """Mean and std over seeds (ddof 1; None for a single seed, whose spread is unknown)."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": len(arr)}


def format_mean_std(stat: dict, fmt: str) -> str:
    """A mean_std() result as "mean ± std" in `fmt` (the std unsigned), or the mean alone for one seed."""
    return format(stat["mean"], fmt) + (f" ± {format(stat['std'], fmt.lstrip('+'))}" if stat["std"] is not None else "")


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """m[i] = mean(values[i-window+1 : i+1]); NaN for i < window-1 (fewer than `window` values so far)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    out = np.full(len(values), np.nan)
    out[window - 1:] = (sums[window:] - sums[:-window]) / window
    return out


def first_reach(steps: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    """The first step whose (smoothed) value is >= target; None if it never is (NaNs never count)."""
    hits = np.nonzero(np.nan_to_num(curve, nan=-np.inf) >= target)[0]
    return int(steps[hits[0]]) if len(hits) else None


def training_curves(run_dir: Path, keys: tuple[str, ...] = ("reward/total", "kl/ref")) -> dict[str, np.ndarray]:
    """Training steps 1..N and the trailing means of `keys` (rows without a training step, e.g. step 0, dropped;
    a key logged on a schedule is linearly interpolated between the steps that measured it)."""
    from mogen.evaluation.runs import load_metrics

    series = load_metrics(run_dir)
    rows = np.isfinite(series["reward/total"])
    out = {"step": series["step"][rows].astype(int)}
    for key in keys:
        values = series[key][rows]
        measured = np.isfinite(values)
        if measured.any() and not measured.all():  # a diagnostic measured every few steps (kl/ref): interpolate
            values = np.interp(out["step"], out["step"][measured], values[measured])
        out[key] = trailing_mean(values, WINDOW)
    return out
