"""Pretrain mogen's built-in tiny text-to-image flow model from scratch on the toy world's training split.

Two stages, one command, deterministic from --seed:
  1. autoencoder: AutoencoderKL (32x32 RGB <-> 4x8x8) with L1 + MSE reconstruction and a tiny KL;
     then the latent shift/scale are set from data (z = (latent - shift) * scale, SD3's convention).
  2. flow: CLIPTextModel + SD3Transformer2DModel trained jointly with the rectified-flow loss
         x_t = (1 - t) x0 + t eps,   loss = || v_theta(x_t, t, c) - (eps - x0) ||^2,   t ~ logit-normal(0, 1),
     on frozen autoencoder latents; an EMA of the weights is what gets evaluated and exported.

Checkpoints are written atomically (temp file, then rename) every --ckpt-every steps and --resume continues
exactly (model, optimizer, EMA, data and torch RNG states). Every --eval-every flow steps the EMA model is
sampled with the ODE on fixed prompts and seeds and scored by the toy-world verifier per attribute; the
export (save_pretrained folder) goes to WORK_DIR/export/step_N.

    python scripts/pretrain_tiny.py --work-dir runs/tiny --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from mogen.models.tiny import TinyConfig, TinyT2I
from mogen.toyworld import TASKS, sample_batch, sample_scenes, save_grid
from mogen.toyworld.verify import verify


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True, help="checkpoints, metrics.jsonl, grids, exports")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoint.pt")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=9000, help="flow-matching steps (sets the lr schedule)")
    p.add_argument("--stop-at", type=int, default=None, help="end after this many flow steps, schedule unchanged")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr * this")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-per-task", type=int, default=48, help="eval prompts per task and split")
    p.add_argument("--eval-steps", type=int, default=10, help="ODE steps when evaluating")
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--eval-sampler", choices=("ode", "sde"), default="ode", help="sde uses eta 0.7")
    p.add_argument("--eval-only", type=str, default=None, help="only evaluate this model folder (or builtin:tiny)")
    p.add_argument("--group-size", type=int, default=16, help="--eval-only: samples per prompt for the group statistics")
    p.add_argument("--group-prompts", type=int, default=8, help="--eval-only: prompts per task for the group statistics")
    for name, value in asdict(TinyConfig()).items():  # model sizes, e.g. --num-layers 6
        if isinstance(value, (int, float)):
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return p.parse_args()


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_vae(model: TinyT2I, rng: np.random.Generator, args: argparse.Namespace, state: dict, ckpt: Path) -> None:
    """Stage 1: reconstruction + 1e-6 * KL (the KL only keeps the latent scale in check)."""
    vae = model.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    start = state.get("vae_step", 0)
    bar = tqdm(range(start, args.vae_steps), desc="autoencoder", initial=start, total=args.vae_steps, mininterval=10)
    for step in bar:
        for group in opt.param_groups:  # cosine from vae_lr to 0.05 * vae_lr
            group["lr"] = args.vae_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        x = sample_batch(args.vae_batch_size, rng, split="train")[1] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.vae_steps:
            state.update(vae=vae.state_dict(), vae_opt=opt.state_dict(), vae_step=step + 1, data_rng=rng.bit_generator.state)
            atomic_save(state, ckpt)
    # SD3-style latent normalisation from data: shift = mean, scale = 1 / std of the posterior mode.
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = sample_batch(1024, np.random.default_rng(args.seed + 1), split="train")[1] * 2 - 1
        latents = vae.encode(x).latent_dist.mode()
    latent_norm = {"shift_factor": latents.mean().item(), "scaling_factor": 1.0 / latents.std().item()}
    state.update(vae=vae.state_dict(), latent_norm=latent_norm, stage="flow", data_rng=rng.bit_generator.state)
    state.pop("vae_opt", None)
    atomic_save(state, ckpt)


def summarize(scores: dict[str, torch.Tensor]) -> dict:
    """Mean of each attribute over the images it applies to (NaN marks not applicable)."""
    return {name: round(float(v.nanmean()), 4) for name, v in scores.items() if not v.isnan().all()}


def eval_prompts(args: argparse.Namespace, split: str) -> list[str]:
    rng = np.random.default_rng(args.eval_seed)
    return [s.prompt for task in TASKS for s in sample_scenes(args.eval_per_task, rng, split, (task,))]


@torch.no_grad()
def evaluate(ema_model: TinyT2I, args: argparse.Namespace, step: int) -> dict:
    """ODE samples on fixed prompts and seeds, scored per attribute by the toy-world verifier."""
    ema_model.eval()
    result: dict = {"step": step}
    for split in ("train", "heldout"):
        prompts = eval_prompts(args, split)
        images = torch.cat(
            [ema_model.sample(prompts[i : i + 64], args.eval_steps, args.eval_sampler, 0.7, seed=args.eval_seed + i) for i in range(0, len(prompts), 64)]
        )
        scores = verify(images, prompts)
        n = args.eval_per_task
        by_task = {task: summarize({name: v[i * n : (i + 1) * n] for name, v in scores.items()}) for i, task in enumerate(TASKS)}
        result[split] = {**summarize(scores), "by_task": by_task}
        save_grid(images[:: max(1, len(prompts) // 64)][:64], args.work_dir / "grids" / f"{split}_step{step:06d}.png")
    return result


@torch.no_grad()
def group_stats(model: TinyT2I, args: argparse.Namespace, split: str) -> dict:
    """Per attribute, the fraction of prompts whose group of samples has both better and worse scores
    (what group-normalised RL advantages need), and the mean within-group std of `overall`."""
    rng = np.random.default_rng(args.eval_seed + 1)
    prompts = [s.prompt for task in TASKS for s in sample_scenes(args.group_prompts, rng, split, (task,))]
    repeated = [p for p in prompts for _ in range(args.group_size)]
    images = torch.cat(
        [model.sample(repeated[i : i + 64], args.eval_steps, args.eval_sampler, 0.7, seed=args.eval_seed + i) for i in range(0, len(repeated), 64)]
    )
    stats: dict = {"group_size": args.group_size, "prompts": len(prompts)}
    scores = verify(images, repeated)
    for name, v in scores.items():
        groups = v.view(len(prompts), args.group_size)
        groups = groups[~groups.isnan().any(1)]  # prompts the attribute applies to
        if len(groups):
            stats[f"{name}_mixed_groups"] = round(float((groups.amax(1) > groups.amin(1)).float().mean()), 4)
    overall = scores["overall"].view(len(prompts), args.group_size)
    stats["overall_within_group_std"] = round(float(overall.std(1).mean()), 4)
    return stats


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "grids").mkdir(exist_ok=True)
    ckpt = args.work_dir / "checkpoint.pt"
    if args.eval_only:
        model = TinyT2I.from_pretrained(args.eval_only)
        result = evaluate(model, args, step=0)
        for split in ("train", "heldout"):
            result[split]["groups"] = group_stats(model, args, split)
        result.update(model=args.eval_only, sampler=args.eval_sampler, eval_steps=args.eval_steps, eval_per_task=args.eval_per_task)
        (args.work_dir / f"eval_{args.eval_sampler}_{args.eval_steps}steps.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    config = TinyConfig(**{k: getattr(args, k) for k in asdict(TinyConfig()) if hasattr(args, k)})

    torch.manual_seed(args.seed)
    model = TinyT2I.from_config(config, args.work_dir / "tokenizer")
    rng = np.random.default_rng(args.seed)
    state: dict = {"stage": "vae", "config": asdict(config)}
    if args.resume:
        if not ckpt.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt}; run once without --resume first")
        state = torch.load(ckpt, weights_only=True)
        # Before the flow stage has started only the autoencoder's sizes are fixed by the checkpoint.
        keys = asdict(config) if "flow" in state else ("image_size", "latent_channels", "vae_channels")
        changed = {k: state["config"][k] for k in keys if state["config"][k] != asdict(config)[k]}
        if changed:
            raise SystemExit(f"--resume: sizes differ from the checkpoint's {changed}; pass the same size flags")
        state["config"] = asdict(config)
        model.vae.load_state_dict(state["vae"])
        rng.bit_generator.state = state["data_rng"]
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
    if state["stage"] == "vae":
        train_vae(model, rng, args, state, ckpt)
    model.vae.register_to_config(**state["latent_norm"])
    model.vae.eval().requires_grad_(False)

    # Stage 2: text encoder + transformer, jointly. Reseeding makes its noise independent of how stage 1 ran
    # (one command, or stage 1 then --resume), so both give the same run.
    if "flow" not in state:
        torch.manual_seed(args.seed + 1)
    params = list(model.transformer.parameters()) + list(model.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMAModel(params, decay=args.ema_decay)
    if "flow" in state:
        model.transformer.load_state_dict(state["flow"]["transformer"])
        model.text_encoder.load_state_dict(state["flow"]["text_encoder"])
        opt.load_state_dict(state["flow"]["opt"])
        ema.load_state_dict(state["flow"]["ema"])
    start = state.get("flow_step", 0)
    model.transformer.train().requires_grad_(True)
    model.text_encoder.train().requires_grad_(True)
    ema_model = copy.deepcopy(model)
    metrics = (args.work_dir / "metrics.jsonl").open("a")
    end = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    bar = tqdm(range(start, end), desc="flow", initial=start, total=end, mininterval=10)
    t0, loss_avg = time.time(), None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        prompts, images = sample_batch(args.batch_size, rng, split="train")
        with torch.no_grad():
            x0 = model.encode_images(images)
        eps = torch.randn_like(x0)
        t = torch.sigmoid(torch.randn(x0.shape[0]))  # logit-normal(0, 1) flow times
        t_ = t.view(-1, 1, 1, 1)
        x_t = (1 - t_) * x0 + t_ * eps
        v = model.velocity(x_t, t, model.text_conditioning(prompts))
        loss = (v.float() - (eps - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr_at(step, args):.1e}", refresh=False)
        done = step + 1
        if done % 50 == 0:
            metrics.write(json.dumps({"step": done, "loss": loss_avg, "grad_norm": grad_norm.item(), "lr": lr_at(step, args),
                                      "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            metrics.flush()
        if done % args.ckpt_every == 0 or done == end:
            state.update(flow_step=done, data_rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(), flow={
                "transformer": model.transformer.state_dict(), "text_encoder": model.text_encoder.state_dict(),
                "opt": opt.state_dict(), "ema": ema.state_dict()})
            atomic_save(state, ckpt)
        if done % args.eval_every == 0 or done == end:
            ema_params = list(ema_model.transformer.parameters()) + list(ema_model.text_encoder.parameters())
            ema.copy_to(ema_params)
            result = evaluate(ema_model, args, done)
            metrics.write(json.dumps({"eval": result}) + "\n")
            metrics.flush()
            tqdm.write(json.dumps(result))
            export = args.work_dir / "export" / f"step_{done:06d}"
            tmp = export.with_name(export.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(export, ignore_errors=True)
            ema_model.save_pretrained(tmp)
            os.replace(tmp, export)
            (export / "eval.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
