"""The four checks every model family passes, written once (tests/test_<family>.py supply the pipelines).

(a) mogen's ODE sampler reproduces the pipeline's own __call__; (b) rollout + first update: ratio exactly 1 and
KL exactly 0, then KL > 0; (c) the exported LoRA loads with the pipeline's load_lora_weights and gives the
adapted policy's velocity; (d) the family's recipe validates with `mogen align --dry-run` and trains one real step on the tiny pipeline
(`mogen align --set ...`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from typer.testing import CliRunner

from mogen.cli import app
from mogen.config import AlgorithmConfig, LoraConfig, Recipe, load_recipe
from mogen.export import LORA_WEIGHT_NAME, export_lora
from mogen.lora import adapter_disabled, attach_lora
from mogen.objectives import Advantages
from mogen.rollout import Rollout, collect_rollout
from mogen.sampling import ode_step, timesteps
from mogen.update import UpdateInputs, policy_update

PROMPTS = ["two red circles", "a blue square left of a green triangle"]
CPU = torch.device("cpu")


def ode_latents(policy, noise: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """mogen's deterministic sampler, stopping before the decode."""
    cond = policy.encode_prompts(PROMPTS)
    times = timesteps(num_steps, shift)
    x = noise
    with torch.no_grad():
        for t, t_next in zip(times[:-1], times[1:]):
            x = ode_step(policy.velocity(x, t.expand(len(x)), cond), x, t, t_next).prev_sample
    return x


def run_pipeline(pipe, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's images in [0, 1] and its final latents (read by a step-end callback) from one call."""
    final = {}

    def keep_latents(pipeline, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    images = pipe(**kwargs, output_type="pt", callback_on_step_end=keep_latents).images
    return images, final["latents"]


def check_frozen(policy) -> None:
    """Nothing trains before LoRA is attached: the transformer, the VAE and every text encoder are frozen."""
    assert not any(p.requires_grad for m in [policy.transformer, policy.vae, *policy.text_encoders] for p in m.parameters())


def check_first_update(policy) -> Rollout:
    """A rollout of 2 prompts x 2 samples with two trained SDE steps, then one DPPO update (4 minibatches): ratio
    exactly 1 and KL exactly 0 at first (LoRA B = 0), KL > 0 after the step. Returns the rollout for a family's own checks."""
    trainable = attach_lora(policy.transformer, LoraConfig(rank=4, alpha=8))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    prompts, group_ids = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, torch.tensor([0, 0, 1, 1])
    rollout = collect_rollout(
        policy, prompts, group_ids, kind="sde", eta=0.7, num_steps=4, shift=3.0, trained_steps=torch.tensor([0, 2]),
        generator=torch.Generator().manual_seed(0), device=CPU, base_policy=lambda: adapter_disabled(policy.transformer),
    )
    assert rollout.latents.shape == (4, 2, *policy.latent_shape) and rollout.log_probs.shape == (4, 2)
    assert torch.equal(rollout.ref_kl(), torch.zeros(4, 2))  # LoRA B = 0: the adapted model is the base model
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    inputs = UpdateInputs(Advantages(advantages[None], advantages), torch.ones(4, dtype=torch.bool), slice(0, 4), torch.ones(1),
                          torch.tensor([1e-5]), ["reward"])
    policy.transformer.train()
    stats = policy_update(policy, trainable, optimizer, Accelerator(cpu=True), rollout, inputs, AlgorithmConfig(name="dppo"),
                          "sde", 0.7, 1.0, torch.Generator().manual_seed(0))
    assert stats["ratio_min"] == stats["ratio_max"] == 1.0 and stats["kl_max"] == 0.0
    assert stats["kl_after"] > 0  # the step moved the policy
    return rollout


def randomize_lora(transformer: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero LoRA weights, so that a wrong key, scale or dropped module would change the output."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.5


def policy_output(policy) -> torch.Tensor:
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return policy.velocity(x, torch.tensor([0.7, 0.3]), policy.encode_prompts(PROMPTS))


def check_lora_export(policy, family: str, load_pipeline: Callable[[], object], wrap: Callable[[object], object], out: Path,
                      target_modules: list[str] | None = None) -> None:
    """Export a random LoRA, load it into a fresh pipeline with load_lora_weights: the adapted velocity, not the base's."""
    targets = {"target_modules": target_modules} if target_modules else {}
    attach_lora(policy.transformer, LoraConfig(rank=4, alpha=12, **targets))  # alpha / rank = 3: diffusers must read the alpha
    randomize_lora(policy.transformer)
    expected = policy_output(policy)
    assert export_lora(policy.transformer, family, out) == out / LORA_WEIGHT_NAME
    pipeline = load_pipeline()
    base = policy_output(wrap(pipeline))
    pipeline.load_lora_weights(out)
    torch.testing.assert_close(policy_output(wrap(pipeline)), expected, rtol=1e-5, atol=1e-5)
    assert (base - expected).abs().max() > 1e-2


def train_recipe_one_step(recipe_path: Path, model: Path, image_size: int, run_dir: Path, extra: list[str] = ()) -> dict:
    """`mogen align` on the recipe as published, with the model path, size and cost overridden: the dry run prints
    the recipe's own settings, then one real step of its algorithm runs and leaves a diffusers LoRA."""
    runner = CliRunner()
    dry = runner.invoke(app, ["align", "--recipe", str(recipe_path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert load_recipe(recipe_path) == Recipe.model_validate(yaml.safe_load(dry.output))
    overrides = [
        f"model.name={model}", f"model.resolution={image_size}", "model.dtype=float32", "train.mixed_precision=no",
        "rollout.prompts_per_batch=1", "rollout.group_size=2", "train.steps=1", "train.log_with=[]",
        "prompts={source: toyworld}", "rewards=[{name: vivid}, {name: compressibility}]", f"output_dir={run_dir}", *extra,
    ]
    result = runner.invoke(app, ["align", "--recipe", str(recipe_path), *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    (metrics,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert (run_dir / "lora" / LORA_WEIGHT_NAME).is_file()
    return metrics
