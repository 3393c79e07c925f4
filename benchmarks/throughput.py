"""Where a training step's time goes, at two scales, and what it costs over the floor.

Scales: `tiny` is the pinned quickstart (quickstart_runs.BASE_OVERRIDES: builtin:tiny, 32 samples a step), where
per-call overhead matters; `mid` is the same recipe on a random-weight SD3 transformer (12 blocks, hidden 768,
32 x 32 x 16 latents, built by random_sd3.py and loaded as `model: {family: sd3}`) with 4 samples a step, where the
transformer's forwards dominate as on a GPU (it draws from two toy-world prompts, so that the sample grid `align`
draws after its last step stays small). `quickstart` (not run by default) is recipes/quickstart.yaml as it
ships, unpinned. Each scale runs in its own process on one thread (peak RSS is that
process's), and measures:

1. Floor: what any on-policy method must do per step with the same model, LoRA and batch: the rollout's
   `num_steps` forwards (no grad) and, at the trained steps, a forward + backward of a plain loss per minibatch
   plus the optimizer step. Timed (wall and CPU) before and after the trainer runs.
2. Trainer: `align` for N steps and for 1 step (after an untimed 1-step warm-up), for Flow-DPPO and GRPO, once with the diagnostics schedule of the
   recipe and config defaults (the default quickstart step) and once with `--every-step` (default
   `train.diagnostics_every=1`: the base model's means for kl/ref and kl/old_new on every step). Per-step costs
   are means over steps 2..N (a scheduled diagnostic counts at its share): the trainer's time/rollout_s,
   reward_s, train_s, and (N-step run - 1-step run) / (N - 1) of the whole call's wall and CPU time.
3. Forwards: every transformer call is counted (samples, with and without grad) with a global forward hook, per
   step by the same difference of runs, next to the floor's and a replay-style update's, which recomputes the
   old policy's means from the stored latents before the update (one no-grad forward per trained step over the
   batch) where mogen records them during the rollout.

4. Overlap (`--overlap`, its own run, written under the "overlap" key): step time with a slow scorer, the toy world's
   letter task scored by tesseract OCR (toy_verifier's `text` attribute), with the rollout scored after sampling
   and sampled in chunks scored on a background thread while the next chunk samples (`rollout.chunk_size`,
   `rollout.overlap`); the chunked run without overlap separates what chunking costs from what overlap saves.

    python -m benchmarks.throughput                      # both scales; writes results/throughput.{json,png}
    # measured at load ~6 on 2 cores: tiny (10 steps, 3 repeats) 5.3 min wall / 1.5 min CPU;
    # mid with --steps 2 --repeats 1: 30 min wall / 17.5 min CPU (the defaults, 4 steps and 3 repeats, need ~2x that CPU)
    python -m benchmarks.throughput --scales tiny --steps 20
    python -m benchmarks.throughput --smoke --out /tmp/t.json   # seconds: small batch, toy SD3, 2 steps
    python -m benchmarks.throughput --overlap --steps 4  # only section 4 (4.5 min at load 5); other JSON keys kept
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads

import argparse
import itertools
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from benchmarks.quickstart_runs import BASE_OVERRIDES, RECIPE, ROOT, code_commit, machine, write_results
from typing_extensions import Self

OUT_JSON = ROOT / "benchmarks" / "results" / "throughput.json"
ALGORITHMS = {"dppo": [], "grpo_clip1e-4": ["algorithm.name=grpo", "algorithm.clip_range=1.0e-4"]}
NO_PROBES = ["eval.suites=[]", "eval.every=0", "train.log_with=[]"]
OVERLAP_TASK = ["prompts.tasks=[text]", "advantage.mode=sum_then_normalize"]
OCR_REWARD = "{name: toy_verifier, label: text, kwargs: {attribute: text}}"  # tesseract on every image
OVERLAP_MODES = {"after_sampling": ["rollout.chunk_size=null"],
                 "chunked_no_overlap": ["rollout.overlap=false"],
                 "overlap": ["rollout.overlap=true"]}
SMALL_BATCH = ["rollout.prompts_per_batch=2", "rollout.group_size=2"]
DEFAULT_STEPS = {"tiny": 10, "mid": 4, "quickstart": 10}
FLOOR_PARTS = ("encode", "rollout_forwards", "decode", "one_forward", "train_fwd_bwd")


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


def scale_overrides(scale: str, smoke: bool, work: Path) -> tuple[list[str], str]:
    """The recipe overrides of a scale (building its SD3 folder in `work` for `mid`) and a line describing the model."""
    batch = SMALL_BATCH if smoke else []
    if scale == "tiny":
        return [*BASE_OVERRIDES, *batch], "builtin:tiny"
    if scale == "quickstart":  # recipes/quickstart.yaml as it ships today (its batch, not the pinned one)
        return batch, "builtin:tiny, recipes/quickstart.yaml as shipped"
    from benchmarks.random_sd3 import MID, TOY, save_random_sd3

    from mogen.config import load_recipe
    from mogen.prompts import PromptSource

    size = TOY if smoke else MID
    folder = work / size.name
    save_random_sd3(size, folder)
    model = [f"model.name={folder}", "model.family=sd3", f"model.resolution={size.image_size}", "model.max_sequence_length=32"]
    # two toy-world prompts of the pinned tasks: the sample grid `align` draws at its last step (4 images a prompt, up to 8 prompts) would
    # otherwise cost more forwards than the step itself at this size; it cancels out of the per-step numbers anyway
    prompts, _ = PromptSource.build(load_recipe(RECIPE, BASE_OVERRIDES).prompts).draw(2, 1, np.random.default_rng(0))
    (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
    prompt_file = [f"prompts={{source: file, path: {work / 'prompts.txt'}}}"]
    return [*BASE_OVERRIDES, *model, *prompt_file, *SMALL_BATCH], f"random_sd3.{'TOY' if smoke else 'MID'}: {size.transformer}"


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def floor_bench(overrides: list[str]) -> tuple[Callable[[int], dict[str, list[tuple[float, float]]]], dict]:
    """The floor with the scale's model, LoRA, batch and minibatches: returns measure(repeats), giving (wall, cpu)
    seconds of each part per repeat, and the setup's facts."""
    from mogen.config import load_recipe
    from mogen.lora import attach_lora
    from mogen.models.loading import load_policy
    from mogen.prompts import PromptSource
    from mogen.models.contract import index_cond
    from mogen.sampling import ode_step, timesteps

    recipe = load_recipe(RECIPE, overrides)
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

    def measure(repeats: int, warm_up: bool = True) -> dict[str, list[tuple[float, float]]]:
        parts: dict[str, list[tuple[float, float]]] = {k: [] for k in FLOOR_PARTS}
        for repeat in range(int(warm_up), repeats + 1):  # repeat 0 warms up
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
            for _ in range(recipe.algorithm.updates_per_batch):
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
             "num_steps": sampler.num_steps, "minibatches": minibatches, "updates_per_batch": recipe.algorithm.updates_per_batch}
    return measure, facts


def adjacent_floor(before: dict, after: dict) -> dict[str, float]:
    """The floor (wall and CPU seconds) as the mean of one measurement right before a run pair and one right after:
    a ratio to it compares work done under the same load, which a floor measured at the start and end does not."""
    def seconds(clock: int) -> float:
        return statistics.mean(sum(part[i][clock] for part in (m["rollout_forwards"], m["train_fwd_bwd"])) for m in (before, after)
                               for i in range(len(m["rollout_forwards"])))
    return {"floor_s": seconds(0), "floor_cpu_s": seconds(1)}


def trainer_run(overrides: list[str], steps: int, work: Path, module_class: type) -> dict:
    """`align` for `steps` steps: the per-step times it logged, the transformer forwards counted, the wall and CPU
    seconds of the whole call, and the resolved `train` section (the diagnostics schedule in force)."""
    from mogen.config import load_recipe
    from mogen.evaluation.runs import load_metrics
    from mogen.trainer import align

    recipe = load_recipe(RECIPE, [*overrides, *NO_PROBES, f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                  f"train.sample_every={steps}", f"output_dir={work}"])
    wall, cpu = time.perf_counter(), time.process_time()
    with ForwardCounter(module_class) as counter:
        align(recipe)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    series = load_metrics(work)
    rows = np.isfinite(series["time/train_s"])
    times = {k: series[f"time/{k}_s"][rows].tolist() for k in ("rollout", "reward", "train")}
    return {"times": times, "counts": counter.counts, "wall": wall, "cpu": cpu, "train_config": recipe.train.model_dump()}


def per_step(long: dict, short: dict, steps: int) -> dict:
    """Costs per step over steps 2..N: trainer-logged time means (and medians), and the N-run - 1-run difference."""
    t = {f"{k}_s": float(np.mean(v[1:])) for k, v in long["times"].items()}
    t |= {f"{k}_median_s": float(statistics.median(v[1:])) for k, v in long["times"].items()}
    t["wall_per_step_s"] = (long["wall"] - short["wall"]) / (steps - 1)
    t["cpu_per_step_s"] = (long["cpu"] - short["cpu"]) / (steps - 1)
    t["per_step_times"] = long["times"]
    forwards = {k: (long["counts"][k] - short["counts"][k]) / (steps - 1) for k in long["counts"]}
    return {"seconds": t, "forwards": forwards, "train_config": long["train_config"]}


def measure_scale(scale: str, steps: int, repeats: int, every_step: list[str], smoke: bool) -> dict:
    """Everything for one scale, in this (fresh) process on one thread."""
    from mogen.config import ConfigError, load_recipe

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        overrides, model = scale_overrides(scale, smoke, Path(tmp))
        measure, facts = floor_bench(overrides)
        parts = measure(repeats)
        rss_floor = peak_rss_mib()
        variants = {"default": [], "every_step": every_step}
        runs, skipped = {}, {}
        trainer_run(overrides, 1, Path(tmp) / "warmup", facts["transformer_class"])  # first-call costs land here, untimed
        for variant, extra in variants.items():
            try:
                load_recipe(RECIPE, [*overrides, *extra])
            except ConfigError as err:  # this mogen has no such setting: say so instead of guessing
                skipped[variant] = f"{' '.join(extra)}: {err}"
                continue
            for algorithm, algo in ALGORITHMS.items():
                run_overrides = [*overrides, *algo, *extra]
                before = measure(1, warm_up=False)  # the floor right before and after: the same load as the runs
                long = trainer_run(run_overrides, steps, Path(tmp) / f"{algorithm}_{variant}", facts["transformer_class"])
                short = trainer_run(run_overrides, 1, Path(tmp) / f"{algorithm}_{variant}_1", facts["transformer_class"])
                after = measure(1, warm_up=False)
                runs[f"{algorithm}/{variant}"] = per_step(long, short, steps) | {"adjacent_floor": adjacent_floor(before, after)}
                for key in parts:
                    parts[key] += before[key] + after[key]
        for key, values in measure(repeats).items():  # again after: the load may have changed meanwhile
            parts[key] += values
    fl = {f"{k}_s": float(statistics.median(w for w, _ in v)) for k, v in parts.items()}
    fl |= {f"{k}_cpu_s": float(statistics.median(c for _, c in v)) for k, v in parts.items()}
    fl["floor_s"] = fl["rollout_forwards_s"] + fl["train_fwd_bwd_s"]
    fl["floor_cpu_s"] = fl["rollout_forwards_cpu_s"] + fl["train_fwd_bwd_cpu_s"]
    b, s, u = facts["batch"], facts["trained_steps"], facts["updates_per_batch"]
    floor_forwards = {"no_grad_samples": facts["num_steps"] * b, "grad_samples": s * b * u}
    for run in runs.values():
        t, f = run["seconds"], run["forwards"]
        t["step_s"] = t["rollout_s"] + t["train_s"]
        t["step_over_floor"] = t["step_s"] / fl["floor_s"]
        t["cpu_step_over_floor"] = t["cpu_per_step_s"] / fl["floor_cpu_s"]
        t["cpu_step_over_adjacent_floor"] = t["cpu_per_step_s"] / run["adjacent_floor"]["floor_cpu_s"]
        t["reward_images_per_s"] = b / t["reward_s"]
        f["extra_no_grad_forwards_over_floor"] = (f.get("no_grad_samples", 0) - floor_forwards["no_grad_samples"]) / b
    return {
        "model": model, "overrides": [o.replace(tmp, "<temporary folder>") for o in overrides], "steps": steps, "floor_repeats": 2 * repeats,
        **{k: v for k, v in facts.items() if k != "transformer_class"},
        "floor": fl,
        "runs": runs,
        "skipped": skipped,
        "forwards_per_step_in_samples": {
            "floor": floor_forwards,
            "replay_style": {**floor_forwards, "no_grad_samples": floor_forwards["no_grad_samples"] + s * b},
            **{name: {k: run["forwards"].get(k, 0.0) for k in ("no_grad_samples", "grad_samples")} for name, run in runs.items()},
        },
        "old_means_recorded_at_rollout": {"no_grad_samples_saved_per_step": s * b, "seconds_saved_per_step": s * fl["one_forward_s"],
                                          "cpu_seconds_saved_per_step": s * fl["one_forward_cpu_s"]},
        "peak_rss_mib": {"after_floor": rss_floor, "after_trainer_runs": peak_rss_mib()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "git_commit": code_commit(),
    }


def relative_paths(value: object) -> object:
    """The results with the repository's absolute path removed from every string (they must not name this machine)."""
    if isinstance(value, dict):
        return {k: relative_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v) for v in value]
    return value.replace(f"{ROOT}/", "").replace(str(ROOT), ".") if isinstance(value, str) else value


def cpu_clock() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the tesseract subprocesses)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def overlap_run(reward: str, steps: int, chunk_size: int, overrides: list[str], work: Path) -> dict:
    """One `align` on the pinned quickstart with the letter task and `reward`: its logged times per step (the first,
    warm-up step dropped) and wall and CPU seconds per step over the whole call."""
    from mogen.config import load_recipe
    from mogen.evaluation.runs import load_metrics
    from mogen.trainer import align

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

    scales = list(results["scales"])
    fig, axes = plt.subplots(len(scales), 2, figsize=(16, 3.6 * len(scales)), squeeze=False, gridspec_kw={"width_ratios": [3, 2]})
    colors = {"rollout forwards": "C0", "trained fwd+bwd": "C1", "rollout": "C0", "reward": "C2", "update": "C1"}
    for (ax, fwd_ax), scale in zip(axes, scales):
        r = results["scales"][scale]
        fl = r["floor"]
        rows = [("floor", {"rollout forwards": fl["rollout_forwards_s"], "trained fwd+bwd": fl["train_fwd_bwd_s"]})]
        rows += [(name, {"rollout": run["seconds"]["rollout_s"], "reward": run["seconds"]["reward_s"], "update": run["seconds"]["train_s"]})
                 for name, run in r["runs"].items()]
        seen = set()
        for y, (label, parts) in enumerate(rows):
            left = 0.0
            for part, seconds in parts.items():
                ax.barh(y, seconds, left=left, color=colors[part], alpha=0.55 if label == "floor" else 0.9,
                        label=part if part not in seen else None, edgecolor="black", lw=0.5)
                seen.add(part)
                left += seconds
            ratio = f" (rollout + update {r['runs'][label]['seconds']['step_over_floor']:.2f}x floor)" if label != "floor" else ""
            ax.text(left, y, f" {left:.2f} s{ratio}", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.set(xlabel="wall s per step (mean of steps 2..N; one thread, shared machine)", title=f"{scale}: {r['model'] if len(r['model']) < 40 else r['model'].split(':')[0]}")
        ax.set_xlim(0, 1.9 * ax.get_xlim()[1])  # room for the labels
        ax.legend(fontsize=7, loc="lower right")
        forwards = r["forwards_per_step_in_samples"]
        names = list(forwards)
        y = np.arange(len(names))
        no_grad = [forwards[n]["no_grad_samples"] for n in names]
        grad = [forwards[n]["grad_samples"] for n in names]
        fwd_ax.barh(y, no_grad, color="C0", label="no-grad samples")
        fwd_ax.barh(y, grad, left=no_grad, color="C1", label="grad samples (fwd+bwd)")
        fwd_ax.set_yticks(y, names, fontsize=8)
        fwd_ax.set(xlabel="transformer sample-forwards per step", title=f"{scale}: forwards (batch {r['batch']})")
        fwd_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="tiny,mid", help="comma-separated: tiny, mid, quickstart")
    parser.add_argument("--steps", type=int, default=None, help=f"trainer steps per run (default {DEFAULT_STEPS}); step 1 is not timed")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the floor measurement, before and after the trainer runs")
    parser.add_argument("--every-step", default="train.diagnostics_every=1",
                        help="recipe override(s), space-separated, that run every diagnostic on every step")
    parser.add_argument("--smoke", action="store_true", help="seconds, for a test: 4 samples a step, a toy SD3, 2 steps, 1 repeat")
    parser.add_argument("--out", type=Path, default=OUT_JSON, help="results JSON (the PNG is written next to it)")
    parser.add_argument("--overlap", action="store_true", help="only measure overlap (section 4): OCR-scored steps with and without it")
    parser.add_argument("--chunk-size", type=int, default=8, help="rollout.chunk_size of the overlap runs (the batch is 32)")
    args = parser.parse_args()
    if args.overlap:
        with tempfile.TemporaryDirectory() as tmp:
            overlap = overlap_bench(args.steps or 4, args.chunk_size, Path(tmp))
        write_overlap(overlap)
        for name, scenario in overlap["scenarios"].items():
            print(name, json.dumps({k: v for k, v in scenario.items() if k != "modes"} | {
                m: {k: round(v, 2) for k, v in r.items() if k.endswith("_s")} for m, r in scenario["modes"].items()}, indent=2))
        print(f"wrote the overlap key of {OUT_JSON}")
        return
    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    unknown = sorted(set(scales) - set(DEFAULT_STEPS))
    if unknown:
        parser.error(f"--scales: unknown {unknown}; choose from {sorted(DEFAULT_STEPS)}")
    if args.smoke and args.out == OUT_JSON:
        parser.error("--smoke: give --out (smoke numbers must not replace the committed results)")
    if args.steps is not None and args.steps < 2:
        parser.error("--steps: at least 2 (step 1 is the baseline subtracted from the others)")
    repeats = 1 if args.smoke else args.repeats
    started = time.perf_counter()
    results: dict = {"recipe": str(RECIPE.relative_to(ROOT)), "smoke": args.smoke, "every_step_overrides": args.every_step.split(),
                     "machine": machine(1), "scales": {}}
    context = multiprocessing.get_context("spawn")
    for scale in scales:
        steps = args.steps or (2 if args.smoke else DEFAULT_STEPS[scale])
        with ProcessPoolExecutor(1, mp_context=context) as pool:  # a fresh process per scale: its own peak RSS
            results["scales"][scale] = pool.submit(measure_scale, scale, steps, repeats, args.every_step.split(), args.smoke).result()
        print(f"{scale}: done in {results['scales'][scale]['wall_seconds']} s", flush=True)
    results["notes"] = [
        ("one thread per scale; the machine is shared, so wall times move with the load (machine.load_average_at_write);"
         " cpu_* numbers are the process's CPU time (time.process_time), which the load barely changes."),
        ("runs: '<algorithm>/default' uses the diagnostics schedule of the recipe and config defaults (train_config shows it);"
         " '<algorithm>/every_step' adds every_step_overrides. skipped: variants this mogen's config rejects."),
        ("seconds: rollout_s/reward_s/train_s are means over steps 2..N of the trainer's time/* (wall); step_s = rollout_s + train_s;"
         " step_over_floor = step_s / floor_s; cpu_step_over_floor = cpu_per_step_s (whole step, incl. reward and logging) / floor_cpu_s;"
         " cpu_step_over_adjacent_floor divides by adjacent_floor, the floor measured right before and after that run pair (the"
         " same load), where floor_cpu_s is the median over every floor measurement of the scale."),
        "scales measured by an earlier invocation keep their numbers; each scale has its own load_average_at_end and git_commit.",
        ("floor: the rollout's forwards over the batch (no grad) + forward/backward of a plain loss at the trained steps per"
         " minibatch + optimizer steps; encode/decode/one_forward are listed but not in the floor."),
        ("forwards_per_step_in_samples: transformer samples per step (calls x batch); replay_style = floor + one no-grad forward"
         " per trained step over the batch to recompute the old policy's means before the update (mogen records them at rollout);"
         " old_means_recorded_at_rollout prices those forwards with the floor's one_forward (a no-grad forward over the batch)."),
        "reward_images_per_s: batch / reward_s, the trainer's scoring of the recipe's objectives (three toy-verifier attributes).",
        "peak_rss_mib: ru_maxrss of the scale's own process, after the floor and after all trainer runs.",
    ]
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.out == OUT_JSON and OUT_JSON.is_file():
        previous = json.loads(OUT_JSON.read_text())
        results["scales"] = {**{k: v for k, v in previous.get("scales", {}).items() if k not in scales}, **results["scales"]}
        if "overlap" in previous:
            results["overlap"] = previous["overlap"]  # measured by its own run (--overlap)
    results = relative_paths(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    summary = {scale: {name: {k: round(run["seconds"][k], 3) for k in ("step_s", "step_over_floor", "cpu_step_over_floor", "cpu_step_over_adjacent_floor")
                              if k in run["seconds"]}
                       for name, run in r["runs"].items()} | {"floor_s": round(r["floor"]["floor_s"], 3), "skipped": r["skipped"]}
               for scale, r in results["scales"].items()}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
