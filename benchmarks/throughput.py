"""Where a training step's time goes, for Flow-DPPO and GRPO on the built-in tiny model, and what it costs over the floor.

1. Trainer breakdown: `align` on the pinned quickstart (quickstart_runs.BASE_OVERRIDES, no probes) for a few steps
   per algorithm, in this process on one thread; the trainer's own time/rollout_s, reward_s and train_s per step
   (median over steps after the first two).
2. Floor: what any on-policy method must do per step with the same model, LoRA and batch, timed with the same
   policy object: the rollout's 10 transformer forwards over the 32 samples (no grad) and, for the 3 trained
   steps, a forward + backward of a plain loss (mean squared velocity) per minibatch of 16 plus the optimizer
   step. Overhead = trainer (rollout + update) - floor.
3. Forwards: every transformer call during training is counted with a global module forward hook (calls and
   samples, with and without grad; a run of `--steps` steps minus a run of 2 steps, so setup and the final
   sample grid cancel). Recording the old policy's means at rollout time saves recomputing them before the update:
   one no-grad forward per trained step over the batch (3 x 32 samples per step); we count and time those.
4. Scorer images/s from benchmarks/results/scorer_throughput.json (measured there), and the reward time per
   step they imply for a batch of 32.

5. Overlap (`--overlap`, its own run, written under the "overlap" key): step time with a slow scorer, the toy world's
   letter task scored by tesseract OCR (toy_verifier's `text` attribute), with the rollout scored after sampling
   and sampled in chunks scored on a background thread while the next chunk samples (`rollout.chunk_size`,
   `rollout.overlap`); the chunked run without overlap separates what chunking costs from what overlap saves.

tiny_speed.py measures the raw model (rollout and LoRA forward+backward outside the trainer); this measures the
trainer against that kind of floor.

    python -m benchmarks.throughput             # measured: 61 s on an idle machine, 101 s at load 5
    python -m benchmarks.throughput --steps 20  # longer trainer runs, steadier medians
    python -m benchmarks.throughput --overlap --steps 4  # only section 5 (4.5 min at load 5); other JSON keys kept
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from typing_extensions import Self

from benchmarks.quickstart_runs import BASE_OVERRIDES, RECIPE, ROOT, machine, write_results
from mogen.config import load_recipe
from mogen.evaluation.runs import load_metrics
from mogen.lora import attach_lora
from mogen.models.contract import index_cond
from mogen.models.loading import load_policy
from mogen.prompts import PromptSource
from mogen.sampling import ode_step, timesteps
from mogen.trainer import align

OUT_JSON = ROOT / "benchmarks" / "results" / "throughput.json"
OUT_PNG = ROOT / "benchmarks" / "results" / "throughput.png"
SCORERS_JSON = ROOT / "benchmarks" / "results" / "scorer_throughput.json"
ALGORITHMS = {"dppo": [], "grpo_clip1e-4": ["algorithm.name=grpo", "algorithm.clip_range=1.0e-4"]}
NO_PROBES = ["eval.suites=[]", "eval.every=0", "train.log_with=[]"]


class ForwardCounter:
    """Counts calls of modules of one class (the transformer) and the samples they saw, split by grad mode."""

    def __init__(self, module_class: type):
        self.module_class = module_class
        self.counts: Counter = Counter()
        self.handle = None

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if type(module) is self.module_class:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            mode = "grad" if torch.is_grad_enabled() else "no_grad"
            self.counts[f"{mode}_calls"] += 1
            self.counts[f"{mode}_samples"] += int(hidden.shape[0])

    def __enter__(self) -> Self:
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def trainer_run(algorithm: str, steps: int, work: Path, module_class: type) -> tuple[dict, Counter, float, float]:
    """`align` for `steps` steps; returns the per-step times it logged, the transformer forwards counted, and the
    wall and CPU seconds of the whole call (CPU time of this one-thread process barely moves with the machine's load)."""
    recipe = load_recipe(RECIPE, [*BASE_OVERRIDES, *ALGORITHMS[algorithm], *NO_PROBES, f"train.steps={steps}",
                                  f"train.checkpoint_every={steps}", f"train.sample_every={steps}", f"output_dir={work}"])
    wall, cpu = time.perf_counter(), time.process_time()
    with ForwardCounter(module_class) as counter:
        align(recipe)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    series = load_metrics(work)
    rows = np.isfinite(series["time/train_s"])
    return {k: series[f"time/{k}_s"][rows].tolist() for k in ("rollout", "reward", "train")}, counter.counts, wall, cpu


def median_after_warmup(values: list[float], skip: int = 2) -> float:
    return float(statistics.median(values[skip:] if len(values) > skip else values))


FLOOR_PARTS = ("encode", "rollout_forwards", "decode", "one_forward", "train_fwd_bwd")


def floor_bench() -> tuple[Callable[[int], dict[str, list[tuple[float, float]]]], dict]:
    """The floor with the pinned quickstart's model, LoRA, batch and minibatches: returns measure(repeats), giving
    (wall, cpu) seconds of each part per repeat, and the setup's facts. Measured before and after the trainer runs."""
    recipe = load_recipe(RECIPE, BASE_OVERRIDES)
    torch.manual_seed(0)
    policy = load_policy(recipe.model, device=torch.device("cpu"), guidance_scale=recipe.sampler.guidance_scale)
    trainable = attach_lora(policy.transformer, recipe.lora)
    with torch.no_grad():  # LoRA B starts at 0; move it as training would (the cost is the same, the math is not trivial)
        for p in trainable:
            p.add_(1e-3 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(trainable, lr=recipe.optim.lr)
    prompts, _ = PromptSource.build(recipe.prompts).draw(recipe.rollout.prompts_per_batch, recipe.rollout.group_size,
                                                          np.random.default_rng(0))
    batch, sampler, minibatches = len(prompts), recipe.sampler, recipe.algorithm.minibatches
    times = timesteps(sampler.num_steps, sampler.shift)
    trained = list(range(sampler.train_steps))

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def measure(repeats: int) -> dict[str, list[tuple[float, float]]]:
        parts: dict[str, list[tuple[float, float]]] = {k: [] for k in FLOOR_PARTS}
        for repeat in range(repeats + 1):  # the first repeat warms up
            ticks = [clock()]
            with torch.no_grad():
                cond = policy.encode_prompts(prompts)
                ticks.append(clock())
                x = torch.randn(batch, *policy.latent_shape)
                latents = []
                for i in range(sampler.num_steps):
                    latents.append(x)
                    x = ode_step(policy.velocity(x, times[i].expand(batch), cond), x, times[i], times[i + 1]).prev_sample
                ticks.append(clock())
                policy.decode(x)
                ticks.append(clock())
                policy.velocity(latents[0], times[0].expand(batch), cond)
                ticks.append(clock())
            policy.transformer.train()
            for minibatch in torch.arange(batch).chunk(minibatches):
                optimizer.zero_grad(set_to_none=True)
                sub = index_cond(cond, minibatch)
                for s in trained:
                    velocity = policy.velocity(latents[s][minibatch], times[s].expand(len(minibatch)), sub)
                    (velocity.float().square().mean() / len(trained)).backward()
                optimizer.step()
            policy.transformer.eval()
            ticks.append(clock())
            if repeat:
                for key, (a, b) in zip(FLOOR_PARTS, itertools.pairwise(ticks)):
                    parts[key].append((b[0] - a[0], b[1] - a[1]))
        return parts

    facts = {"transformer_class": type(policy.transformer), "batch": batch, "trained_steps": len(trained),
             "num_steps": sampler.num_steps, "minibatches": minibatches}
    return measure, facts


def scorer_rates() -> dict:
    if not SCORERS_JSON.is_file():
        return {}
    results = json.loads(SCORERS_JSON.read_text())["results"]
    return {name: r["images_per_s"] for name, r in results.items() if isinstance(r, dict) and "images_per_s" in r}


OVERLAP_TASK = ["prompts.tasks=[text]", "advantage.mode=sum_then_normalize"]
OCR_REWARD = "{name: toy_verifier, label: text, kwargs: {attribute: text}}"  # tesseract on every image
OVERLAP_MODES = {"after_sampling": ["rollout.chunk_size=null"],
                 "chunked_no_overlap": ["rollout.overlap=false"],
                 "overlap": ["rollout.overlap=true"]}


def cpu_clock() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the tesseract subprocesses)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def overlap_run(reward: str, steps: int, chunk_size: int, overrides: list[str], work: Path) -> dict:
    """One `align` on the pinned quickstart with the letter task and `reward`: its logged times per step (the first,
    warm-up step dropped) and wall and CPU seconds per step over the whole call."""
    recipe = load_recipe(RECIPE, [*BASE_OVERRIDES, *OVERLAP_TASK, f"rewards=[{reward}]", *NO_PROBES,
                                  f"rollout.chunk_size={chunk_size}", *overrides, f"train.steps={steps}",
                                  f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
                                  "train.diagnostics_every=1000", f"output_dir={work}"])
    wall, (cpu, cpu_children) = time.perf_counter(), cpu_clock()
    align(recipe)
    wall, cpu, cpu_children = time.perf_counter() - wall, *(b - a for a, b in zip((cpu, cpu_children), cpu_clock()))
    series = load_metrics(work)
    times = {k: series[f"time/{k}_s"][1:].tolist() for k in ("rollout", "reward", "reward_wait", "train")}
    times["step"] = [r + w + t for r, w, t in zip(times["rollout"], times["reward_wait"], times["train"])]
    return {"times": times, "wall": wall / steps, "cpu": cpu / steps, "cpu_children": cpu_children / steps,
            "reward_total": series["reward/total"].tolist()}


def overlap_runs(reward: str, steps: int, chunk_size: int, work: Path) -> dict:
    """Each mode twice, in the order after_sampling, chunked, overlap, overlap, chunked, after_sampling (so a drift in
    the machine's load hits every mode alike); per mode the medians over both runs' steps 2.."""
    runs: dict[str, list[dict]] = {mode: [] for mode in OVERLAP_MODES}
    for i, mode in enumerate([*OVERLAP_MODES, *reversed(OVERLAP_MODES)]):
        runs[mode].append(overlap_run(reward, steps, chunk_size, OVERLAP_MODES[mode], work / f"{i}-{mode}"))
    modes = {}
    for mode, pair in runs.items():
        times = {k: [v for run in pair for v in run["times"][k]] for k in pair[0]["times"]}
        modes[mode] = {
            **{f"{k}_s": float(statistics.median(v)) for k, v in times.items()},
            **{f"{k}_per_step_s": statistics.mean(run[k] for run in pair) for k in ("wall", "cpu", "cpu_children")},
            "step_s_per_run": [float(statistics.median(run["times"]["step"])) for run in pair],
            "reward_total": pair[0]["reward_total"], "per_step_times": times,
        }
    after, chunked, overlapped = modes["after_sampling"], modes["chunked_no_overlap"], modes["overlap"]
    return {
        "reward": reward, "modes": modes,
        "saving_s_per_step": after["step_s"] - overlapped["step_s"],
        "saving_fraction": 1 - overlapped["step_s"] / after["step_s"],
        "overlap_saving_over_chunked_s_per_step": chunked["step_s"] - overlapped["step_s"],
        "same_rewards_with_and_without_overlap": all(
            run["reward_total"] == runs["chunked_no_overlap"][0]["reward_total"] for run in runs["chunked_no_overlap"] + runs["overlap"]),
    }


def ocr_server(log: Path) -> tuple[subprocess.Popen, str]:
    """`mogen serve-reward toy_verifier --set attribute=text` on a free loopback port, in its own session: the kernel
    then shares the CPU between it and this process as between two machines' worth of work (a scorer elsewhere)."""
    command = [sys.executable, "-m", "mogen", "serve-reward", "toy_verifier", "--set", "attribute=text", "--port", "0"]
    with open(log, "w") as out:  # the server's output goes to the file: a pipe nobody reads could fill and block it
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while server.poll() is None and time.monotonic() < deadline:
        if "http://127.0.0.1:" in (text := log.read_text()):  # it names its URL once it listens
            return server, "http://127.0.0.1:" + text.split("http://127.0.0.1:")[1].split()[0]
        time.sleep(0.5)
    server.terminate()
    server.wait(timeout=60)
    raise RuntimeError(f"serve-reward did not start: {log.read_text()[-2000:]}")


def overlap_bench(steps: int, chunk_size: int, work: Path) -> dict:
    """The in-process OCR scorer, then the same scorer served by `mogen serve-reward` (the `remote` client)."""
    scenarios = {"in_process_ocr": overlap_runs(OCR_REWARD, steps, chunk_size, work / "in_process")}
    server, url = ocr_server(work / "server.log")
    try:
        remote = f"{{name: remote, label: text, kwargs: {{url: '{url}', reward: toy_verifier}}}}"
        scenarios["remote_ocr"] = overlap_runs(remote, steps, chunk_size, work / "remote")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "task": OVERLAP_TASK, "chunk_size": chunk_size, "steps": steps, "scenarios": scenarios,
        "notes": [
            ("each mode runs twice (order after, chunked, overlap, overlap, chunked, after). step_s: median over"
             " both runs' steps 2.. of time/rollout_s + time/reward_wait_s + time/train_s (the loop's own clocks);"
             " reward_s is the decode + OCR time, which overlap hides behind the next chunk's sampling, and"
             " reward_wait_s the part it did not hide. wall/cpu_per_step_s: the whole align call (setup, final grid"
             " and LoRA export included) / steps, mean of the two runs."),
            ("cpu_per_step_s is this process's CPU time, cpu_children_per_step_s its tesseract subprocesses' (in"
             " process only; the server's are not counted). One torch thread."),
            ("in_process_ocr: scoring and sampling share this process's CPU allowance. On this shared machine (2 cores,"
             " load ~5, the kernel's autogroup scheduler giving each session a fixed share) a second busy thread gets"
             " no extra CPU, so overlap cannot shorten the step here; it does where a core is free."),
            ("remote_ocr: the same scorer served by `mogen serve-reward` in its own session (its own CPU share, as a"
             " scorer on other hardware would have): the trainer's worker thread only waits on HTTP while the next"
             " chunk samples."),
        ],
    }


def write_overlap(results: dict) -> None:
    """Update the "overlap" key of throughput.json, keeping every other key as it is."""
    existing = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    write_results(OUT_JSON, {**existing, "overlap": {**results, "machine": machine(1)}})


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fl = results["floor"]
    fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 2]})
    rows = [("floor", {"rollout forwards": fl["rollout_forwards_s"], "trained fwd+bwd": fl["train_fwd_bwd_s"]})]
    for algorithm, r in results["trainer"].items():
        rows.append((algorithm, {"rollout": r["rollout_s"], "reward": r["reward_s"], "update": r["train_s"]}))
    colors = {"rollout forwards": "C0", "trained fwd+bwd": "C1", "rollout": "C0", "reward": "C2", "update": "C1"}
    seen = set()
    for y, (label, parts) in enumerate(rows):
        left = 0.0
        for part, seconds in parts.items():
            ax.barh(y, seconds, left=left, color=colors[part], alpha=0.55 if label == "floor" else 0.9,
                    label=part if part not in seen else None, edgecolor="black", lw=0.5)
            seen.add(part)
            left += seconds
        ax.text(left + 0.02, y, f"{left:.2f} s", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set(xlabel="wall seconds per training step (median; one thread on a shared machine)",
           title="Per step: rollout / reward / update vs the floor")
    ax.legend(fontsize=8, loc="lower right")
    names = list(results["trainer"])
    floor_cpu = fl["floor_cpu_s"]
    extra = [results["trainer"][n]["extra_forwards_cpu_s"] for n in names]
    rest = [results["trainer"][n]["cpu_per_step_s"] - floor_cpu - e for n, e in zip(names, extra)]
    y = np.arange(len(names))
    cpu_ax.barh(y, [floor_cpu] * len(names), color="grey", label="floor")
    cpu_ax.barh(y, extra, left=floor_cpu, color="C4", label="extra no-grad forwards (kl/ref, kl/old_new)")
    cpu_ax.barh(y, rest, left=[floor_cpu + e for e in extra], color="C3", label="everything else")
    for i, n in enumerate(names):
        cpu_ax.text(results["trainer"][n]["cpu_per_step_s"] + 0.02, i, f"{results['trainer'][n]['cpu_per_step_s']:.2f} s", va="center", fontsize=9)
    cpu_ax.set_yticks(y, names)
    cpu_ax.set(xlabel="CPU seconds per training step (load-independent)", title="Trainer CPU per step over the floor")
    cpu_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="trainer steps per algorithm (the first 2 are not timed)")
    parser.add_argument("--repeats", type=int, default=4, help="repeats of the floor measurement, before and after the trainer runs")
    parser.add_argument("--overlap", action="store_true", help="only measure overlap (section 5): OCR-scored steps with and without it")
    parser.add_argument("--chunk-size", type=int, default=8, help="rollout.chunk_size of the overlap runs (the batch is 32)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.overlap:
        with tempfile.TemporaryDirectory() as tmp:
            results = overlap_bench(args.steps, args.chunk_size, Path(tmp))
        write_overlap(results)
        for name, scenario in results["scenarios"].items():
            print(name, json.dumps({k: v for k, v in scenario.items() if k != "modes"} | {
                m: {k: round(v, 2) for k, v in r.items() if k.endswith("_s")} for m, r in scenario["modes"].items()}, indent=2))
        print(f"wrote the overlap key of {OUT_JSON}")
        return
    started = time.perf_counter()
    measure, facts = floor_bench()
    parts = measure(args.repeats)
    trainer, forwards = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:
            times, counts, wall, cpu = trainer_run(algorithm, args.steps, Path(tmp) / algorithm, facts["transformer_class"])
            _, counts_short, wall_short, cpu_short = trainer_run(algorithm, 2, Path(tmp) / f"{algorithm}_2", facts["transformer_class"])
            forwards[algorithm] = {k: (counts[k] - counts_short[k]) / (args.steps - 2) for k in counts}
            trainer[algorithm] = {f"{k}_s": median_after_warmup(v) for k, v in times.items()}
            trainer[algorithm]["total_s"] = sum(trainer[algorithm].values())
            trainer[algorithm]["wall_per_step_s"] = (wall - wall_short) / (args.steps - 2)
            trainer[algorithm]["cpu_per_step_s"] = (cpu - cpu_short) / (args.steps - 2)
            trainer[algorithm]["per_step_times"] = times
    for key, values in measure(args.repeats).items():  # again after: the load may have changed meanwhile
        parts[key] += values
    fl = {f"{k}_s": float(statistics.median(w for w, _ in v)) for k, v in parts.items()}
    fl |= {f"{k}_cpu_s": float(statistics.median(c for _, c in v)) for k, v in parts.items()}
    fl["floor_s"] = fl["rollout_forwards_s"] + fl["train_fwd_bwd_s"]
    fl["floor_cpu_s"] = fl["rollout_forwards_cpu_s"] + fl["train_fwd_bwd_cpu_s"]
    b, s = facts["batch"], facts["trained_steps"]
    floor_no_grad = facts["num_steps"] * b
    for algorithm, t in trainer.items():
        extra_forwards = (forwards[algorithm]["no_grad_samples"] - floor_no_grad) / b  # in batch-of-32 forwards
        t |= {
            "rollout_over_floor_s": t["rollout_s"] - fl["rollout_forwards_s"],
            "update_over_floor_s": t["train_s"] - fl["train_fwd_bwd_s"],
            "update_over_floor_fraction": t["train_s"] / fl["train_fwd_bwd_s"] - 1,
            "step_over_floor_fraction": (t["rollout_s"] + t["train_s"]) / fl["floor_s"] - 1,
            "cpu_step_over_floor_fraction": t["cpu_per_step_s"] / fl["floor_cpu_s"] - 1,
            "extra_no_grad_forwards_per_step": extra_forwards,
            "extra_forwards_cpu_s": extra_forwards * fl["one_forward_cpu_s"],
        }
    rates = scorer_rates()
    results = {
        "recipe": str(RECIPE.relative_to(ROOT)), "base_overrides": BASE_OVERRIDES, "machine": machine(1),
        "trainer_steps": args.steps, "floor_repeats": 2 * args.repeats, **{k: v for k, v in facts.items() if k != "transformer_class"},
        "trainer": trainer,
        "floor": fl,
        "transformer_forwards_per_step": forwards,
        "transformer_forwards_expected": {
            "rollout (no grad)": f"{facts['num_steps']} calls x {b} samples",
            "base-model means for kl/ref (no grad)": f"{s} calls x {b} samples",
            "update (grad)": f"{s} calls x {facts['minibatches']} minibatches x {b // facts['minibatches']} samples per pass",
            "kl/old_new after the update (no grad, a diagnostic)": f"{s} calls x {b} samples",
        },
        "old_means_recorded_at_rollout": {
            "forwards_saved_per_step": {"calls": s, "samples": s * b},
            "seconds_saved_per_step": s * fl["one_forward_s"],
            "cpu_seconds_saved_per_step": s * fl["one_forward_cpu_s"],
            "fraction_of_dppo_step_cpu": s * fl["one_forward_cpu_s"] / trainer["dppo"]["cpu_per_step_s"],
            "note": ("recomputing mean_old before the update needs one no-grad forward per trained step over the batch"
                     " (once per batch, whatever updates_per_batch is); mogen records it during the rollout instead."),
        },
        "reward_images_per_s_in_trainer": {a: b / t["reward_s"] for a, t in trainer.items()},
        "scorer_images_per_s": rates,
        "notes": [
            ("one thread; the 2-core machine is shared, so wall times move with the load (machine.load_average_at_write)."
            " cpu_* numbers are this process's CPU time (time.process_time), which the load barely changes."),
            ("trainer *_s: medians over steps 3.. of the trainer's time/rollout_s, reward_s, train_s (wall);"
            " cpu_per_step_s and wall_per_step_s: (run of N steps - run of 2 steps) / (N - 2), whole step incl. logging."),
            ("floor: the rollout's 10 forwards over the batch (no grad) + forward/backward of a plain loss at the 3 trained"
            " steps in 2 minibatches + optimizer steps; encode/decode/one_forward are listed but not in the floor."),
            ("extra_no_grad_forwards_per_step: transformer forwards beyond the floor's, in batch-of-32 units: 3 for the"
            " base model's means (kl/ref, a logged diagnostic and the beta penalty's reference) + 3 for kl/old_new."),
            ("reward_images_per_s_in_trainer: 32 images / reward_s, three toy-verifier objectives per image (count, shape,"
            " position). scorer_images_per_s is copied from scorer_throughput.json (its toy_verifier row scores"
            " 'overall' on mixed prompts, including text via tesseract, so it is much slower than the trainer's)."),
        ],
    }
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    if OUT_JSON.is_file() and "overlap" in (previous := json.loads(OUT_JSON.read_text())):
        results["overlap"] = previous["overlap"]  # measured by its own run (--overlap)
    write_results(OUT_JSON, results)
    plot(results, OUT_PNG)
    print(json.dumps({k: v for k, v in results.items() if k not in ("base_overrides",)}, indent=2)[:5000])
    print(f"wrote {OUT_JSON} and {OUT_PNG}")


if __name__ == "__main__":
    main()
