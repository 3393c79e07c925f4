"""Qwen-Image on a tiny random-weight QwenImagePipeline saved to disk and loaded back the way a user's folder is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import QwenImagePipeline

from family_checks import CPU, PROMPTS, check_first_update, check_frozen, check_lora_export, ode_latents, run_pipeline, train_recipe_one_step
from mogen.config import ConfigError
from mogen.models.qwenimage import NEGATIVE_PROMPT, QwenImagePolicy
from mogen.samples import generate
from tiny_families import save_qwenimage_pipeline, save_zimage_pipeline
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS

RECIPE = Path(__file__).parents[1] / "recipes" / "qwenimage" / "clip_pickscore_grpo.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_qwenimage_pipeline(tmp_path_factory.mktemp("models") / "qwenimage")


def load(folder: Path, guidance_scale: float = 4.0) -> QwenImagePolicy:
    return QwenImagePolicy.from_pretrained(folder, CPU, torch.float32, guidance_scale, resolution=IMAGE_SIZE)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0], ids=["no-cfg", "true-cfg"])
def test_sampling_reproduces_the_pipeline(folder, guidance_scale):
    """Packed latents, timestep = t, true CFG with the norm rescale, the latents' mean/std, the dynamic shift."""
    policy = load(folder, guidance_scale)
    assert policy.latent_shape == (LATENT_CHANNELS, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    check_frozen(policy)
    cond = policy.encode_prompts(PROMPTS)
    lengths = cond["prompt_mask"].sum(1)
    assert lengths[0] < lengths[1] == cond["prompt_embeds"].shape[1]
    assert ("negative_prompt_embeds" in cond) == (guidance_scale > 1)
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(policy.unpack(policy.pack(noise)), noise, rtol=0, atol=0)

    pipe = QwenImagePipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    num_steps = 3
    run = dict(prompt=list(PROMPTS), num_inference_steps=num_steps, height=IMAGE_SIZE, width=IMAGE_SIZE,
               latents=policy.pack(noise), true_cfg_scale=guidance_scale, negative_prompt=[NEGATIVE_PROMPT] * 2)
    expected_images, packed_latents = run_pipeline(pipe, run)
    shift = policy.schedule_shift  # e^mu, mu = calculate_shift(64 tokens, 256, 8192, 0.5, 0.9) = 0.490
    assert shift == pytest.approx(1.633, abs=1e-3)
    torch.testing.assert_close(ode_latents(policy, noise, num_steps, shift), policy.unpack(packed_latents), rtol=1e-5, atol=1e-5)
    images = generate(policy, PROMPTS, num_steps, shift, torch.Generator().manual_seed(3), CPU)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and images.std() > 0.01
    torch.testing.assert_close(images, expected_images, rtol=1e-5, atol=1e-5)


def test_rollout_and_first_update_have_ratio_one(folder):
    check_first_update(load(folder))


def test_exported_lora_loads_into_a_fresh_pipeline(folder, tmp_path):
    check_lora_export(
        load(folder), "qwenimage", lambda: QwenImagePipeline.from_pretrained(folder, local_files_only=True),
        lambda pipe: QwenImagePolicy(pipe, CPU, resolution=IMAGE_SIZE), tmp_path / "lora",
    )


def test_recipe_validates_and_trains_a_step(folder, tmp_path):
    metrics = train_recipe_one_step(RECIPE, folder, IMAGE_SIZE, tmp_path / "run")
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"] and metrics["kl/old_new"] > 0


def test_loading_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="not a qwenimage pipeline"):
        QwenImagePolicy.from_pretrained(save_zimage_pipeline(tmp_path / "zimage"))
