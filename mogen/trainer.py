"""`mogen align`: the online RL loop, as one linear recipe (setup -> train -> save -> cleanup).

Each step: draw prompts -> roll out G samples per prompt (recording the trained steps) -> score every objective
-> group-normalised advantages -> policy update (mogen.update; DiffusionNFT and AWM: mogen.forward_update, then
the old adapter's EMA step) -> log, grid, checkpoint.

Seed contract: every random draw of step N (prompts, trained steps, sampling noise, minibatch order; nft/awm's
training times and noise) comes from generators seeded with (train.seed, N). A run is therefore reproducible from its recipe, and `--resume` from a
checkpoint at step N continues exactly as the uninterrupted run would have (bit for bit on CPU).

Diagnostics that need extra forwards (`kl/ref`, the base model's means; `kl/old_new`, the KL of the whole
update) are measured at step 1, every `train.diagnostics_every` steps and at the last step; `kl/ref` at every
step when the recipe needs it (dppo/grpo's beta > 0 or a `max_ref_kl` budget). Other steps omit those keys.
`kl/one_step` comes free from the update's own forwards. None of this changes a random draw: the LoRA is the
same either way. Both are exact KLs of the rollout's stochastic steps, so an all-ODE rollout (nft/awm with
sampler.kind 'ode') has neither; nft/awm have no `mask_fraction` (DPPO's mask) either.

DiffusionNFT samples its rollout with the old adapter (mogen.lora.attach_old_policy), AWM with the trained one;
after each update the old adapter takes an EMA step towards the trained one, decay min(ramp * step, max).

Overlap (`rollout.chunk_size`, `rollout.overlap`): the rollout samples each process's share in chunks and
mogen.overlap decodes and scores each finished chunk on a background thread while the next one samples; rewards are
assembled in sample order and every sample's noise is drawn for the global batch up front, so overlapping changes no
bit, and a chunk size only changes float rounding (a forward over fewer samples). time/reward_s is the decode +
scoring time, time/reward_wait_s the part of it the step waited for after sampling.

The per-step work (`collect_batch`, `update_policy`) is shared with `mogen calibrate`, so its numbers are the
trainer's by construction.

Data parallel (`accelerate launch`, see mogen.distributed): every process draws the same global batch and rolls
out its slice; rewards are gathered, so advantages, logged rewards and the KL gates are those of the whole batch
on every process. Probes, grids, checkpoints and the LoRA are computed by every process (an FSDP forward needs
all of them, and so does gathering sharded weights) and written by the main process, which alone writes metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from mogen.checkpoint import list_checkpoints, load_checkpoint_lora, load_checkpoint_optimizer, save_checkpoint
from mogen.config import Recipe, recipe_to_yaml
from mogen.distributed import check_launch, gather_samples, mean_over_processes, shard_of
from mogen.evaluation.during_training import Probes
from mogen.export import export_lora
from mogen.forward_process import ema_update_, ramped_decay
from mogen.forward_update import draw_training_points, forward_update
from mogen.lora import adapter_disabled, adapter_pairs, attach_lora, attach_old_policy, old_policy, save_lora
from mogen.models.loading import load_policy
from mogen.objectives import Advantages, compute_advantages, ref_kl_gate
from mogen.overlap import ChunkScoring
from mogen.prompts import PromptSource
from mogen.rewards import Objectives, Scores
from mogen.models.contract import FlowPolicy
from mogen.rollout import Rollout, choose_trained_steps, collect_rollout
from mogen.samples import sample_grid
from mogen.update import UpdateInputs, Visit, policy_update


@dataclass
class StepGenerators:
    numpy: np.random.Generator  # prompt draws
    cpu: torch.Generator  # trained-step choice, minibatch order
    device: torch.Generator  # sampling noise


def step_generators(seed: int, step: int, device: torch.device) -> StepGenerators:
    """Independent generators for step `step`, a pure function of (seed, step) (the seed contract)."""
    cpu_seed, device_seed = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint64).tolist()
    return StepGenerators(
        numpy=np.random.default_rng([seed, step, 0]),
        cpu=torch.Generator().manual_seed(cpu_seed),
        device=torch.Generator(device=device).manual_seed(device_seed),
    )


class MetricsLog:
    """metrics.jsonl (one JSON object per step) plus accelerate's trackers (TensorBoard, wandb if asked)."""

    def __init__(self, path: Path, accelerator: Accelerator, resume_step: int):
        self.path, self.accelerator = path, accelerator
        if path.exists() and accelerator.is_main_process:  # drop lines past the checkpoint we resume from: they will be written again
            lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in lines))
        accelerator.wait_for_everyone()  # the other processes read the file (`logged`) only once it is rewritten

    def logged(self) -> list[dict[str, float]]:
        """The metrics written so far (after a resume: up to the checkpoint's step)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def write(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))


@dataclass
class Components:
    """What a step needs, built from a recipe: the policy with its LoRA, the optimizer, objectives, prompts."""

    recipe: Recipe
    accelerator: Accelerator
    policy: FlowPolicy
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    objectives: Objectives
    prompts: PromptSource
    deltas: torch.Tensor  # (K,) per-objective DPPO thresholds
    shard: slice  # this process's samples of the global batch
    old_pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]]  # (trained, old) LoRA weights; [] without old adapter

    @property
    def base_model(self) -> Callable[[], AbstractContextManager]:
        """A context manager factory under which the policy acts as the base model (LoRA disabled)."""
        transformer = self.accelerator.unwrap_model(self.policy.transformer)
        return lambda: adapter_disabled(transformer)

    @property
    def old_model(self) -> Callable[[], AbstractContextManager] | None:
        """A context manager factory under which the policy acts as the old adapter (nft, awm); None without one."""
        if not self.old_pairs:
            return None
        transformer = self.accelerator.unwrap_model(self.policy.transformer)
        return lambda: old_policy(transformer)


def build_components(recipe: Recipe, accelerator: Accelerator, resume_from: Path | None = None) -> Components:
    """Load the model, attach LoRA (from a checkpoint's weights if resuming), prepare it with the optimizer."""
    device = accelerator.device
    set_seed(recipe.train.seed)  # LoRA's initial A matrices come from the global RNG
    policy = load_policy(recipe.model, device=device, guidance_scale=recipe.sampler.guidance_scale)
    trainable = attach_lora(policy.transformer, recipe.lora)
    if recipe.algorithm.keeps_old_adapter:
        attach_old_policy(policy.transformer)  # a copy of the initial LoRA; a checkpoint's replaces it below
    if resume_from is not None:  # into the bare model: accelerator.prepare then shards it (FSDP)
        load_checkpoint_lora(resume_from, policy.transformer)
    if recipe.model.gradient_checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.optim.lr, betas=recipe.optim.betas, eps=recipe.optim.eps, weight_decay=recipe.optim.weight_decay
    )
    policy.transformer, optimizer = accelerator.prepare(policy.transformer, optimizer)
    trainable = [p for p in policy.transformer.parameters() if p.requires_grad]  # FSDP2 replaced them by their shards
    old_pairs = adapter_pairs(policy.transformer) if recipe.algorithm.keeps_old_adapter else []
    objectives = Objectives.build(recipe.rewards, device=device)
    batch_size = recipe.rollout.prompts_per_batch * recipe.rollout.group_size
    return Components(
        recipe, accelerator, policy, trainable, optimizer, objectives, PromptSource.build(recipe.prompts),
        objectives.deltas(recipe.algorithm.delta, recipe.advantage.mode).to(device),
        shard_of(batch_size, accelerator.num_processes, accelerator.process_index), old_pairs,
    )


def needs_ref_kl(recipe: Recipe) -> bool:
    """The loss reads the KL to the base at every step: as dppo/grpo's penalty (beta) or through a budget's gate
    (nft/awm's beta weighs a velocity penalty their update computes itself)."""
    exact_kl_penalty = recipe.algorithm.beta > 0 and not recipe.algorithm.uses_forward_process
    return exact_kl_penalty or any(r.max_ref_kl is not None for r in recipe.rewards)


def has_stochastic_steps(recipe: Recipe) -> bool:
    """The rollout samples (and records) stochastic steps: where kl/ref and kl/old_new, exact KLs, are measured."""
    return recipe.sampler.kind != "ode"


def is_diagnostic_step(recipe: Recipe, done: int) -> bool:
    """Step 1, every `diagnostics_every` steps and the last: the steps that pay for kl/ref and kl/old_new."""
    return done == 1 or done % recipe.train.diagnostics_every == 0 or done == recipe.train.steps


@dataclass
class Batch:
    """One step's rollout, scores and update inputs, and the metrics known before the update."""

    rollout: Rollout
    scores: Scores
    inputs: UpdateInputs
    gens: StepGenerators
    metrics: dict[str, float]


def collect_batch(c: Components, step: int, measure_ref_kl: bool) -> Batch:
    """Roll out the step's prompts, score them, and compute advantages and ref-KL gates (the whole batch)."""
    recipe, accelerator, device = c.recipe, c.accelerator, c.accelerator.device
    sampler, rollout_cfg = recipe.sampler, recipe.rollout
    gens = step_generators(recipe.train.seed, step, device)
    batch_prompts, group_ids = c.prompts.draw(rollout_cfg.prompts_per_batch, rollout_cfg.group_size, gens.numpy)

    def decode(latents: torch.Tensor) -> torch.Tensor:  # on the scoring thread: grad and autocast modes are per thread
        with torch.no_grad(), accelerator.autocast():
            return c.policy.decode(latents).float().clamp(0, 1)

    started = time.perf_counter()
    c.policy.transformer.eval()
    local_prompts = list(batch_prompts)[c.shard]
    background = rollout_cfg.overlap and rollout_cfg.chunk_size is not None and rollout_cfg.chunk_size < len(local_prompts)
    stochastic = (choose_trained_steps(sampler.train_window, sampler.train_steps, gens.cpu) if has_stochastic_steps(recipe)
                  else torch.zeros(0, dtype=torch.long))
    sampling_policy = c.old_model if recipe.algorithm.name == "nft" else nullcontext  # nft samples with the old adapter
    with ChunkScoring(decode, c.objectives.score, local_prompts, device, background) as scoring:
        with sampling_policy(), accelerator.autocast():
            rollout = collect_rollout(
                c.policy, batch_prompts, torch.as_tensor(group_ids),
                kind=sampler.kind, eta=sampler.eta, num_steps=sampler.num_steps, shift=sampler.shift,
                trained_steps=stochastic,
                generator=gens.device, device=device, base_policy=c.base_model if measure_ref_kl else None, shard=c.shard,
                chunk_size=rollout_cfg.chunk_size, on_chunk=scoring.submit,
            )
        rollout_s = time.perf_counter() - started
        started = time.perf_counter()
        images, local_scores, reward_s = scoring.results()
    reward_wait_s = time.perf_counter() - started  # the scoring that did not hide behind sampling
    rollout = dataclasses.replace(rollout, images=images)
    scores = Scores(local_scores.keys, gather_samples(local_scores.raw, accelerator, dim=1),
                    gather_samples(local_scores.failed, accelerator))  # the whole batch, on every process
    group_ids = torch.as_tensor(group_ids, device=device)
    keep = ~scores.failed_groups(group_ids)
    if not bool(keep.all()) and accelerator.is_main_process:
        warnings.warn(f"step {step}: dropping {int((~keep).sum())} samples whose group has a failed reward")

    metrics = {"step": step + 1, **scores.summary(c.objectives.weights)}
    gates = torch.ones(len(c.objectives.keys), device=device)
    if measure_ref_kl:
        local_ref_kl = rollout.ref_kl()
        ref_kl = mean_over_processes(local_ref_kl, accelerator)
        gates = torch.stack([ref_kl_gate(ref_kl, budget) for budget in c.objectives.max_ref_kls]).to(device)
        metrics["kl/ref"] = float(ref_kl)
        metrics.update({f"gate/{k}": float(g) for k, g, b in zip(c.objectives.keys, gates, c.objectives.max_ref_kls) if b})
    advantages = compute_advantages(
        scores.filled(), c.objectives.weights.to(device), group_ids, recipe.advantage.mode,
        recipe.advantage.std_floor, recipe.advantage.clip, recipe.advantage.std, ~torch.isnan(scores.raw) & keep,
    )
    advantages = Advantages(advantages.per_objective[:, c.shard], advantages.combined[c.shard])  # this process's samples
    weights = c.objectives.weights.to(device) * gates if recipe.advantage.mode == "per_objective" else torch.ones(1, device=device)
    inputs = UpdateInputs(advantages, keep, c.shard, weights, c.deltas, c.objectives.loss_keys(recipe.advantage.mode))
    metrics.update({"time/rollout_s": rollout_s, "time/reward_s": reward_s, "time/reward_wait_s": reward_wait_s})
    return Batch(rollout, scores, inputs, gens, metrics)


def update_policy(c: Components, batch: Batch, measure_kl_after: bool, visits: list[Visit] | None = None) -> dict[str, float]:
    """The policy update on one batch, then the old adapter's EMA step (nft, awm); returns its metrics (kl/*,
    mask_fraction for dppo/grpo, update/*, time/train_s)."""
    recipe, algorithm, sampler = c.recipe, c.recipe.algorithm, c.recipe.sampler
    started = time.perf_counter()
    c.policy.transformer.train()
    stats = {}
    if bool(batch.inputs.keep.any()) and algorithm.uses_forward_process:
        points = draw_training_points(sampler, algorithm, len(batch.inputs.keep), c.shard, c.policy.latent_shape,
                                      batch.gens.cpu, batch.gens.device, c.accelerator.device)
        stats = forward_update(
            c.policy, c.trainable, c.optimizer, c.accelerator, batch.rollout, batch.inputs, points, algorithm,
            recipe.train.grad_clip, batch.gens.cpu, c.old_model, c.base_model, sampler.kind, sampler.eta, measure_kl_after,
        )
    elif bool(batch.inputs.keep.any()):
        stats = policy_update(
            c.policy, c.trainable, c.optimizer, c.accelerator, batch.rollout, batch.inputs, algorithm,
            sampler.kind, sampler.eta, recipe.train.grad_clip, batch.gens.cpu,
            measure_kl_after=measure_kl_after, visits=visits,
        )
    metrics = {} if algorithm.uses_forward_process else {"mask_fraction": stats.pop("mask_fraction", 0.0)}
    if "kl_after" in stats:
        metrics["kl/old_new"] = stats.pop("kl_after")
    if "kl_one_step" in stats:
        metrics["kl/one_step"] = stats.pop("kl_one_step")
    metrics.update({f"update/{k}": v for k, v in stats.items()})
    if c.old_pairs:
        metrics["update/old_decay"] = step_old_adapter(c, done=int(batch.metrics["step"]))
    metrics["time/train_s"] = time.perf_counter() - started
    return metrics


def step_old_adapter(c: Components, done: int) -> float:
    """After `done` training steps: old <- d old + (1 - d) trained, d = min(ema_ramp * (done - flat), ema_max) (0 for
    the NFT recipe's first `ema_flat_steps` steps); returns d."""
    algorithm = c.recipe.algorithm
    if algorithm.name == "nft":
        decay = ramped_decay(done, algorithm.nft.ema_ramp, algorithm.nft.ema_max, algorithm.nft.ema_flat_steps)
    else:
        decay = ramped_decay(done, algorithm.awm.ema_ramp, algorithm.awm.ema_max)
    ema_update_([old for _, old in c.old_pairs], [trained for trained, _ in c.old_pairs], decay)
    return decay


def align(recipe: Recipe, resume: bool = False) -> Path:
    """Run the recipe; returns the run directory. See the module docstring for the loop."""
    run_dir = Path(recipe.output_dir)
    accelerator = Accelerator(
        mixed_precision=recipe.train.mixed_precision,
        log_with=recipe.train.log_with or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tb")),
    )
    check_launch(accelerator)
    main = accelerator.is_main_process

    # --- setup -------------------------------------------------------------------------------------------
    checkpoints = list_checkpoints(run_dir)
    if checkpoints and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another output_dir")
    resume_from = checkpoints[-1] if resume and checkpoints else None
    accelerator.wait_for_everyone()  # every process has looked for checkpoints before the main one writes
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(recipe_to_yaml(recipe))
    c = build_components(recipe, accelerator, resume_from)
    policy, optimizer = c.policy, c.optimizer
    start_step = 0
    if resume_from is not None:
        start_step = load_checkpoint_optimizer(resume_from, policy.transformer, optimizer)
        accelerator.print(f"resuming from {resume_from} (step {start_step})")
    accelerator.init_trackers("mogen")
    log = MetricsLog(run_dir / "metrics.jsonl", accelerator, start_step)
    probes = Probes.build(recipe.eval)
    probes.replay(log.logged())
    shown_ref_kl = next((m["kl/ref"] for m in reversed(log.logged()) if "kl/ref" in m), float("nan"))

    # --- train -------------------------------------------------------------------------------------------
    if probes and start_step == 0:  # the base model's probe values: what later steps are compared against
        baseline = {"step": 0, **probes.run(policy)}
        probes.check(baseline)
        log.write(baseline)
    progress = tqdm(range(start_step, recipe.train.steps), initial=start_step, total=recipe.train.steps, desc="align", disable=not main)
    for step in progress:
        done = step + 1
        diagnostic = is_diagnostic_step(recipe, done)
        exact_kl = has_stochastic_steps(recipe)
        batch = collect_batch(c, step, measure_ref_kl=exact_kl and (diagnostic or needs_ref_kl(recipe)))
        metrics = {**batch.metrics, **update_policy(c, batch, measure_kl_after=exact_kl and diagnostic)}
        if probes and done % recipe.eval.every == 0:
            metrics.update(probes.run(policy))
        probes.check(metrics)
        log.write(metrics)
        shown_ref_kl = metrics.get("kl/ref", shown_ref_kl)
        shown = {"reward": f"{metrics['reward/total']:.3f}", "kl_ref": f"{shown_ref_kl:.2e}"}
        if "mask_fraction" in metrics:  # dppo / grpo
            shown["mask"] = f"{metrics['mask_fraction']:.1%}"
        progress.set_postfix(shown)

        if done % recipe.train.sample_every == 0 or done == recipe.train.steps:
            grid = sample_grid(policy, c.prompts.eval_prompts(), recipe.sampler, recipe.train.seed)
            if main:
                (run_dir / "samples").mkdir(exist_ok=True)
                grid.save(run_dir / "samples" / f"step-{done}.png")
        if done % recipe.train.checkpoint_every == 0 or done == recipe.train.steps or probes.should_stop:
            save_checkpoint(run_dir, done, policy.transformer, optimizer, recipe.train.keep_checkpoints)
            accelerator.wait_for_everyone()
        if probes.should_stop:
            accelerator.print(f"stopping at step {done}: the reward-hacking alarm fired and the suite asks to stop")
            break

    # --- save --------------------------------------------------------------------------------------------
    lora_dir = run_dir / "lora"
    if main:
        lora_dir.mkdir(exist_ok=True)
        (lora_dir / "adapter_config.json").write_text(json.dumps(recipe.lora.model_dump(mode="json"), indent=2))
    save_lora(policy.transformer, lora_dir / "adapter.safetensors")  # every process: FSDP gathers the shards
    export_lora(policy.transformer, recipe.model.family, lora_dir)  # pytorch_lora_weights.safetensors for diffusers
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir
