"""How fast is one RL iteration's worth of work on the built-in tiny model, on this machine?

Measures what a Flow-DPPO iteration does with the tiny model: a rollout of 32 images x 10 Flow-SDE steps
(text encoding, 10 transformer calls, decoding to pixels), then one LoRA (rank 32, alpha 64, attention
projections) forward + backward over 3 of those steps for the whole batch. Writes JSON.

    python -m benchmarks.tiny_speed --threads 1 --out benchmarks/results/tiny_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig

from mogen.models import BUILTIN_TINY, LORA_TARGET_MODULES, TinyT2I
from mogen.sampling import flow_sde_step, timesteps
from mogen.toyworld import enumerate_prompts


def rollout(model: TinyT2I, prompts: list[str], num_steps: int, eta: float, generator: torch.Generator) -> tuple[list, torch.Tensor]:
    """One SDE trajectory per prompt; returns the (x_t, t, t_next, x_next) of every step and the images."""
    cond = model.encode_prompts(prompts)
    x = torch.randn(len(prompts), *model.latent_shape, generator=generator)
    times = timesteps(num_steps).tolist()
    steps = []
    with torch.no_grad():
        for t, t_next in zip(times[:-1], times[1:]):
            out = flow_sde_step(model.velocity(x, t, cond), x, t, t_next, eta, generator=generator)
            steps.append((x, t, t_next, out.prev_sample))
            x = out.prev_sample
        images = model.decode(x)
    return steps, images


def lora_update(model: TinyT2I, prompts: list[str], steps: list, trained: list[int], eta: float, opt: torch.optim.Optimizer) -> None:
    """Forward + backward of the LoRA policy's log-prob of the recorded actions at the trained steps."""
    cond = model.encode_prompts(prompts)
    opt.zero_grad(set_to_none=True)
    for i in trained:
        x, t, t_next, x_next = steps[i]
        log_prob = flow_sde_step(model.velocity(x, t, cond), x, t, t_next, eta, prev_sample=x_next).log_prob
        (-log_prob.mean() / len(trained)).backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BUILTIN_TINY)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--trained-steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tiny_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = TinyT2I.from_pretrained(args.model)
    n_params = {name: sum(q.numel() for q in getattr(model, name).parameters()) for name in ("transformer", "text_encoder", "vae")}
    model.transformer.add_adapter(LoraConfig(r=32, lora_alpha=64, target_modules=LORA_TARGET_MODULES))
    lora_params = [q for q in model.transformer.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(lora_params, lr=3e-4)
    prompts = (enumerate_prompts("train", "count") * args.batch)[: args.batch]
    generator = torch.Generator().manual_seed(0)
    trained = list(range(args.trained_steps))  # from the first half of the trajectory, as in MixGRPO/Flow-DPPO
    rollout_s, update_s = [], []
    for repeat in range(args.repeats + 1):  # the first repeat warms up and is not counted
        t0 = time.perf_counter()
        steps, _ = rollout(model, prompts, args.num_steps, 0.7, generator)
        t1 = time.perf_counter()
        lora_update(model, prompts, steps, trained, 0.7, opt)
        t2 = time.perf_counter()
        if repeat:
            rollout_s.append(t1 - t0)
            update_s.append(t2 - t1)
    result = {
        "model": args.model,
        "threads": args.threads,
        "batch": args.batch,
        "num_steps": args.num_steps,
        "trained_steps": args.trained_steps,
        "lora_rank": 32,
        "params": n_params,
        "lora_params": sum(q.numel() for q in lora_params),
        "rollout_s_median": round(statistics.median(rollout_s), 3),
        "lora_fwd_bwd_s_median": round(statistics.median(update_s), 3),
        "iteration_s_median": round(statistics.median(r + u for r, u in zip(rollout_s, update_s)), 3),
        "rollout_s": [round(s, 3) for s in rollout_s],
        "lora_fwd_bwd_s": [round(s, 3) for s in update_s],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "note": "wall-clock on a shared 2-core machine; other processes add noise",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
