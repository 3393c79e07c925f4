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

tiny_speed.py measures the raw model (rollout and LoRA forward+backward outside the trainer); this measures the
trainer against that kind of floor.

    python benchmarks/throughput.py             # about 2 minutes (measured under load: see wall_seconds)
    python benchmarks/throughput.py --steps 20  # longer trainer runs, steadier medians
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from quickstart_runs import BASE_OVERRIDES, RECIPE, ROOT, machine
from typing_extensions import Self

from mogen.config import load_recipe
from mogen.evaluation.runs import load_metrics
from mogen.lora import attach_lora
from mogen.models.loading import load_policy
from mogen.prompts import PromptSource
from mogen.rollout import index_cond
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


def trainer_run(algorithm: str, steps: int, work: Path, module_class: type) -> tuple[dict, Counter]:
    """`align` for `steps` steps; returns the run's per-step times and the transformer forwards counted."""
    recipe = load_recipe(RECIPE, [*BASE_OVERRIDES, *ALGORITHMS[algorithm], *NO_PROBES, f"train.steps={steps}",
                                  f"train.checkpoint_every={steps}", f"train.sample_every={steps}", f"output_dir={work}"])
    with ForwardCounter(module_class) as counter:
        align(recipe)
    series = load_metrics(work)
    rows = np.isfinite(series["time/train_s"])
    return {k: series[f"time/{k}_s"][rows].tolist() for k in ("rollout", "reward", "train")}, counter.counts


def median_after_warmup(values: list[float], skip: int = 2) -> float:
    return float(statistics.median(values[skip:] if len(values) > skip else values))


def floor(repeats: int) -> dict:
    """Median seconds of the floor's parts with the pinned quickstart's model, LoRA, batch and minibatches."""
    recipe = load_recipe(RECIPE, BASE_OVERRIDES)
    torch.manual_seed(0)
    policy = load_policy(recipe.model, device=torch.device("cpu"), guidance_scale=recipe.sampler.guidance_scale)
    trainable = attach_lora(policy.transformer, recipe.lora)
    with torch.no_grad():  # move LoRA off its zero init, as after some training (B = 0 would skip nothing, but be honest)
        for p in trainable:
            p.add_(1e-3 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(trainable, lr=recipe.optim.lr)
    prompts, _ = PromptSource.build(recipe.prompts).draw(recipe.rollout.prompts_per_batch, recipe.rollout.group_size,
                                                          np.random.default_rng(0))
    batch, sampler, minibatches = len(prompts), recipe.sampler, recipe.algorithm.minibatches
    times = timesteps(sampler.num_steps, sampler.shift)
    trained = list(range(sampler.train_steps))
    parts: dict[str, list[float]] = {k: [] for k in ("encode", "rollout_forwards", "decode", "one_forward", "train_fwd_bwd")}
    for repeat in range(repeats + 1):  # the first repeat warms up
        tick = time.perf_counter()
        with torch.no_grad():
            cond = policy.encode_prompts(prompts)
            t_encode = time.perf_counter()
            x = torch.randn(batch, *policy.latent_shape)
            latents = []
            for i in range(sampler.num_steps):
                latents.append(x)
                x = ode_step(policy.velocity(x, times[i].expand(batch), cond), x, times[i], times[i + 1]).prev_sample
            t_forwards = time.perf_counter()
            policy.decode(x)
            t_decode = time.perf_counter()
            policy.velocity(latents[0], times[0].expand(batch), cond)
            t_one = time.perf_counter()
        policy.transformer.train()
        for minibatch in torch.arange(batch).chunk(minibatches):
            optimizer.zero_grad(set_to_none=True)
            sub = index_cond(cond, minibatch)
            for s in trained:
                velocity = policy.velocity(latents[s][minibatch], times[s].expand(len(minibatch)), sub)
                (velocity.float().square().mean() / len(trained)).backward()
            optimizer.step()
        policy.transformer.eval()
        t_train = time.perf_counter()
        if repeat:
            for key, seconds in zip(parts, (t_encode - tick, t_forwards - t_encode, t_decode - t_forwards, t_one - t_decode, t_train - t_one)):
                parts[key].append(seconds)
    out = {k: float(statistics.median(v)) for k, v in parts.items()}
    out["floor"] = out["rollout_forwards"] + out["train_fwd_bwd"]
    out["transformer_class"] = type(policy.transformer)
    out["batch"], out["trained_steps"], out["num_steps"], out["minibatches"] = batch, len(trained), sampler.num_steps, minibatches
    return out


def scorer_rates() -> dict:
    if not SCORERS_JSON.is_file():
        return {}
    results = json.loads(SCORERS_JSON.read_text())["results"]
    return {name: r["images_per_s"] for name, r in results.items() if isinstance(r, dict) and "images_per_s" in r}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fl = results["floor_s"]
    fig, ax = plt.subplots(figsize=(9, 4))
    rows = [("floor", {"rollout forwards": fl["rollout_forwards"], "trained fwd+bwd": fl["train_fwd_bwd"]})]
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
    ax.set(xlabel="seconds per training step (one thread, batch 32, 10 steps, 3 trained)",
           title="Time per training step: trainer vs floor (rollout forwards + trained forward/backward)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="trainer steps per algorithm (the first 2 are not timed)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the floor measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    fl = floor(args.repeats)
    module_class = fl.pop("transformer_class")
    trainer, forwards = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:
            times, counts = trainer_run(algorithm, args.steps, Path(tmp) / algorithm, module_class)
            _, counts_short = trainer_run(algorithm, 2, Path(tmp) / f"{algorithm}_2", module_class)
            per_step = {k: (counts[k] - counts_short[k]) / (args.steps - 2) for k in counts}
            trainer[algorithm] = {f"{k}_s": median_after_warmup(v) for k, v in times.items()}
            trainer[algorithm]["total_s"] = sum(trainer[algorithm].values())
            update_over_floor = trainer[algorithm]["train_s"] - fl["train_fwd_bwd"]
            rollout_over_floor = trainer[algorithm]["rollout_s"] - fl["rollout_forwards"]
            trainer[algorithm].update({
                "rollout_over_floor_s": rollout_over_floor,
                "update_over_floor_s": update_over_floor,
                "update_overhead_fraction": update_over_floor / fl["train_fwd_bwd"],
                "step_overhead_fraction": (trainer[algorithm]["rollout_s"] + trainer[algorithm]["train_s"]) / fl["floor"] - 1,
                "per_step_times": times,
            })
            forwards[algorithm] = per_step
    b, s = fl["batch"], fl["trained_steps"]
    rates = scorer_rates()
    results = {
        "recipe": str(RECIPE.relative_to(ROOT)), "base_overrides": BASE_OVERRIDES, "machine": machine(1),
        "trainer_steps": args.steps, "floor_repeats": args.repeats,
        "trainer": trainer,
        "floor_s": fl,
        "transformer_forwards_per_step": forwards,
        "transformer_forwards_expected": {
            "rollout (no grad)": f"{fl['num_steps']} calls x {b} samples",
            "base-model means for kl/ref (no grad)": f"{s} calls x {b} samples",
            "update (grad)": f"{s} calls x {fl['minibatches']} minibatches x {b // fl['minibatches']} samples per pass",
            "kl/old_new after the update (no grad, a diagnostic)": f"{s} calls x {b} samples",
        },
        "old_means_recorded_at_rollout": {
            "forwards_saved_per_step": {"calls": s, "samples": s * b},
            "seconds_saved_per_step": s * fl["one_forward"],
            "fraction_of_dppo_step": s * fl["one_forward"] / trainer["dppo"]["total_s"],
            "note": "recomputing mean_old before the update needs one no-grad forward per trained step over the batch "
                    "(once per batch, whatever updates_per_batch is); mogen records it during the rollout instead.",
        },
        "scorer_images_per_s": rates,
        "toy_verifier_seconds_per_batch": (b / rates["toy_verifier (32x32)"]) if "toy_verifier (32x32)" in rates else None,
        "notes": [
            "one thread, shared 2-core machine: absolute times move with the load (load_average_at_write); ratios are steadier.",
            ("update_over_floor_s = trainer train_s - floor train_fwd_bwd: the policy loss math, logging statistics, grad"
            " clipping and the kl/old_new diagnostic forwards (3 x 32 samples, no grad)."),
            ("rollout_over_floor_s = trainer rollout_s - floor rollout_forwards: text encoding, decoding, the base-model"
            " forwards for kl/ref (3 x 32 samples) and the SDE steps' bookkeeping."),
        ],
    }
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, OUT_PNG)
    print(json.dumps({k: v for k, v in results.items() if k not in ("base_overrides",)}, indent=2, default=str)[:6000])
    print(f"wrote {OUT_JSON} and {OUT_PNG}")


if __name__ == "__main__":
    main()
