"""A first run on a CUDA machine: SD3.5-Medium's architecture with random weights, 512 px, bf16, a shipped recipe.

Builds a random-weight StableDiffusion3Pipeline with SD3.5-Medium's transformer and VAE configs (random_sd3.py;
the text encoders are small, with the real output widths), trains N `align` steps of recipes/sd35/ocr_dppo.yaml
as shipped (only the model path, the step count and the logging are overridden), and prints:

- seconds per step (rollout / reward / update, from the run's metrics.jsonl; median of steps 2..N),
- peak GPU memory (torch.cuda.max_memory_allocated) next to memory_estimates.py's prediction for this exact
  config: its arithmetic, its measured activation coefficients (results/memory_estimates.json), and this
  pipeline's parameter counts (the small text encoders count as what they are, not as T5-XXL),
- the on-policy check: the first minibatch of step 1 is scored by the very policy that sampled it, so every
  ratio r = exp(log_prob - log_prob_old) seen before the first optimizer step must be 1 (up to the rounding of
  a forward at another batch size; `--ratio-tol`). Read from the loss functions' own statistics, and the logged
  update/ratio_min/max of step 1 (over all minibatches) printed next to it. Exit code 1 if the check fails.

    python -m benchmarks.gpu_smoke                                   # CUDA: 3 steps of recipes/sd35/ocr_dppo.yaml
    python -m benchmarks.gpu_smoke --recipe recipes/sd35/pickscore_dppo.yaml --set "rewards=[{name: compressibility}]" \
        --set "prompts={source: toyworld}"                           # no PickScore weights or prompt file needed
    python -m benchmarks.gpu_smoke --toy                             # CPU, seconds: toy widths, float32 (tests run this)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import SD3Transformer2DModel
from torch.optim.optimizer import register_optimizer_step_pre_hook
from benchmarks.memory_estimates import CONTEXT_ALLOWANCE, GIB, OUT as ESTIMATES_JSON, ModelSpec, activations_per_sample, numel, static_bytes
from benchmarks.random_sd3 import SD35_MEDIUM_SIZE, TOY, SD3Size, save_random_sd3

import mogen.update
from mogen.config import ConfigError, Recipe, load_recipe
from mogen.lora import attach_lora

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "sd35" / "ocr_dppo.yaml"


class OnPolicyProbe:
    """Records the ratio statistics of every policy-loss call before the first optimizer step of the process.

    Wraps the loss functions mogen.update calls (the real ones run; only their returned statistics are read) and
    watches optimizer steps through torch's global optimizer step pre-hook."""

    def __init__(self) -> None:
        self.ratios: list[tuple[float, float]] = []
        self.stepped = False
        self._saved: dict = {}

    def _wrap(self, loss_fn):
        def wrapped(*args, **kwargs):
            loss, stats = loss_fn(*args, **kwargs)
            if not self.stepped:
                first = stats[0] if isinstance(stats, list) else stats  # dppo: one entry per objective, same ratio
                self.ratios.append((float(first.ratio_min), float(first.ratio_max)))
            return loss, stats

        return wrapped

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.stepped = True

    def __enter__(self) -> OnPolicyProbe:
        for name in ("multi_objective_dppo_loss", "grpo_loss"):
            self._saved[name] = getattr(mogen.update, name)
            setattr(mogen.update, name, self._wrap(self._saved[name]))
        self._hook = register_optimizer_step_pre_hook(self._on_step)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(mogen.update, name, fn)
        self._hook.remove()


def predicted_peak_bytes(size: SD3Size, recipe: Recipe, counts: dict[str, int]) -> dict[str, float]:
    """memory_estimates.py's arithmetic for this pipeline and recipe on one GPU (DDP row): static (bf16 weights,
    fp32 LoRA + grads + AdamW + DDP bucket, VAE) + the larger of the update phase (activations x micro-batch) and
    the rollout phase (no-grad working set x the rollout batch), text encoders resident unless offloaded."""
    with init_empty_weights(include_buffers=True):
        transformer = SD3Transformer2DModel(**size.transformer)
        largest_block = max(numel(block) for block in transformer.transformer_blocks)
        lora = sum(p.numel() for p in attach_lora(transformer, recipe.lora))
    text_tokens = 77 + (recipe.model.max_sequence_length or 256)
    spec = ModelSpec(size.name, "sd3", size.transformer, text_tokens, 2 if recipe.sampler.guidance_scale > 1 else 1)
    coefficients = json.loads(ESTIMATES_JSON.read_text())["activation_coefficients"]["sd3"]
    resolution = recipe.model.resolution or size.image_size
    acts = activations_per_sample(spec, coefficients, resolution)
    per_sample = acts["checkpointed" if recipe.model.gradient_checkpointing else "full"]
    static = static_bytes("ddp", spec, {spec.name: {**counts, "lora": lora, "largest_block": largest_block}})
    encoders = 2 * counts["text_encoders"]
    batch = recipe.rollout.prompts_per_batch * recipe.rollout.group_size
    micro_batch = math.ceil(batch / recipe.algorithm.minibatches)
    update = static + per_sample * micro_batch + (0 if recipe.model.offload else encoders)
    rollout = static + encoders + acts["inference"] * batch
    return {"static": static, "encoders": encoders, "update_phase": update + CONTEXT_ALLOWANCE,
            "rollout_phase": rollout + CONTEXT_ALLOWANCE, "peak": max(update, rollout) + CONTEXT_ALLOWANCE,
            "micro_batch": micro_batch, "rollout_batch": batch, "lora_params": lora, "largest_block_params": largest_block}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="a shipped SD3.5 recipe")
    parser.add_argument("--steps", type=int, default=None, help="align steps (default 3; 2 with --toy)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra recipe override, e.g. --set rollout.group_size=8")
    parser.add_argument("--toy", action="store_true", help="CPU, float32, SD3.5-M's block structure at toy width: a smoke test of this script")
    parser.add_argument("--ratio-tol", type=float, default=1e-3, help="largest |r - 1| accepted on the first minibatch")
    parser.add_argument("--work", type=Path, default=None, help="where the pipeline and the run go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    steps = args.steps or (2 if args.toy else 3)
    if not args.toy and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device; run it on a GPU machine, or with --toy for the CPU smoke test", file=sys.stderr)
        return 2
    size, dtype, device = (TOY, torch.float32, "cpu") if args.toy else (SD35_MEDIUM_SIZE, torch.bfloat16, "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        folder = work / "pipeline"
        started = time.perf_counter()
        counts = save_random_sd3(size, folder, dtype=dtype, device=device)
        build_s = time.perf_counter() - started
        overrides = [f"model.name={folder}", f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
                     "train.log_with=[]", "eval.suites=[]", "eval.every=0", f"output_dir={work / 'run'}"]
        if args.toy:  # the recipe's algorithm, sampler, LoRA and minibatches as shipped; size, precision and batch shrunk
            overrides += [f"model.resolution={size.image_size}", "model.dtype=float32", "train.mixed_precision=no",
                          "rollout.prompts_per_batch=2", "rollout.group_size=2"]
        try:
            recipe = load_recipe(args.recipe, [*overrides, *args.sets])
        except ConfigError as err:
            print(f"gpu_smoke: {err}", file=sys.stderr)
            return 2
        from mogen.trainer import align

        if device == "cuda":  # the pipeline was built on the GPU: release it before measuring the run
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with OnPolicyProbe() as probe:
            run = align(recipe)
        align_s = time.perf_counter() - started
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "time/train_s" in m]
    step_s = [m["time/rollout_s"] + m["time/reward_s"] + m["time/train_s"] for m in train]
    timed = step_s[1:] or step_s
    parts = {k: statistics.median(m[f"time/{k}_s"] for m in (train[1:] or train)) for k in ("rollout", "reward", "train")}
    deviation = max((abs(v - 1.0) for pair in probe.ratios for v in pair), default=float("nan"))
    on_policy = bool(probe.ratios) and deviation <= args.ratio_tol
    prediction = predicted_peak_bytes(size, recipe, counts)
    peak_gpu = torch.cuda.max_memory_allocated() if device == "cuda" else None
    result = {
        "model": size.name, "transformer": size.transformer, "recipe": str(args.recipe.resolve().relative_to(ROOT)) if args.recipe.resolve().is_relative_to(ROOT) else args.recipe.name,
        "overrides": [o for o in [*overrides, *args.sets] if not o.startswith(("model.name=", "output_dir="))],
        "device": device, "dtype": str(dtype).removeprefix("torch."), "resolution": recipe.model.resolution or size.image_size,
        "parameters": counts, "steps": steps, "build_s": build_s, "align_s": align_s,
        "s_per_step": statistics.median(timed), "s_per_step_parts": parts, "step_s": step_s,
        "peak_gpu_gib": peak_gpu / GIB if peak_gpu is not None else None,
        "predicted_gib": {k: v / GIB if k in ("static", "encoders", "update_phase", "rollout_phase", "peak") else v for k, v in prediction.items()},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "on_policy": {"ok": on_policy, "max_abs_ratio_minus_1": deviation, "first_minibatch_ratios": probe.ratios,
                      "logged_step1_ratio_min": train[0].get("update/ratio_min"), "logged_step1_ratio_max": train[0].get("update/ratio_max")},
    }
    predicted = result["predicted_gib"]
    print(f"{size.name} at {result['resolution']} px, {result['dtype']} on {device}; {args.recipe.name}, {steps} steps "
          f"(pipeline built in {build_s:.0f} s; align {align_s:.0f} s)")
    print(f"s/step: {result['s_per_step']:.2f} (rollout {parts['rollout']:.2f} + reward {parts['reward']:.2f} + update {parts['train']:.2f}; "
          f"median of steps {'2..' if len(step_s) > 1 else '1..'}{len(step_s)})")
    measured = f"{result['peak_gpu_gib']:.2f} GiB" if peak_gpu is not None else f"n/a on CPU (peak RSS {result['peak_rss_gib']:.2f} GiB)"
    print(f"peak GPU memory: {measured}; memory_estimates.py predicts {predicted['peak']:.2f} GiB "
          f"(update phase {predicted['update_phase']:.2f} at micro-batch {prediction['micro_batch']}, rollout phase "
          f"{predicted['rollout_phase']:.2f} at {prediction['rollout_batch']}; VAE decode not modelled)")
    print(f"on-policy check (first minibatch of step 1, {len(probe.ratios)} loss calls before the first optimizer step): "
          f"max |r - 1| = {deviation:.2e} -> {'OK' if on_policy else 'FAILED'} (tolerance {args.ratio_tol:g}); "
          f"logged step-1 ratio over all minibatches: [{result['on_policy']['logged_step1_ratio_min']}, {result['on_policy']['logged_step1_ratio_max']}]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if on_policy else 1


if __name__ == "__main__":
    sys.exit(main())
