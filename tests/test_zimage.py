"""Z-Image on a tiny random-weight ZImagePipeline saved to disk and loaded back the way a user's folder is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ZImagePipeline

from family_checks import CPU, PROMPTS, check_first_update, check_frozen, check_lora_export, ode_latents, run_pipeline, train_recipe_one_step
from mogen.config import ConfigError
from mogen.models.zimage import ZImagePolicy
from mogen.samples import generate
from tiny_families import save_zimage_pipeline
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS, save_sd3_pipeline

RECIPE = Path(__file__).parents[1] / "recipes" / "zimage" / "pickscore_grpo.yaml"
TEXT_LENGTH = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zimage_pipeline(tmp_path_factory.mktemp("models") / "zimage")


def load(folder: Path, guidance_scale: float = 1.0) -> ZImagePolicy:
    return ZImagePolicy.from_pretrained(folder, CPU, torch.float32, guidance_scale, resolution=IMAGE_SIZE, max_sequence_length=TEXT_LENGTH)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0], ids=["turbo-no-cfg", "cfg"])
def test_sampling_reproduces_the_pipeline(folder, guidance_scale):
    """Time 1 - t, the negated output, mogen's g = the pipeline's guidance_scale + 1, the shift-3 schedule."""
    policy = load(folder, guidance_scale)
    assert policy.latent_shape == (LATENT_CHANNELS, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    check_frozen(policy)
    cond = policy.encode_prompts(PROMPTS)
    lengths = cond["prompt_mask"].sum(1)
    assert lengths[0] < lengths[1] and cond["prompt_embeds"].shape == (2, lengths[1], 32)  # padded, mask kept
    assert ("negative_prompt_embeds" in cond) == (guidance_scale > 1)
    pipe = ZImagePipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert policy.schedule_shift == 3.0
    num_steps = 3
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    run = dict(prompt=list(PROMPTS), num_inference_steps=num_steps, height=IMAGE_SIZE, width=IMAGE_SIZE, latents=noise,
               guidance_scale=guidance_scale - 1, max_sequence_length=TEXT_LENGTH)
    expected_images, expected_latents = run_pipeline(pipe, run)
    torch.testing.assert_close(ode_latents(policy, noise, num_steps, 3.0), expected_latents, rtol=1e-5, atol=1e-5)
    images = generate(policy, PROMPTS, num_steps, 3.0, torch.Generator().manual_seed(3), CPU)
    torch.testing.assert_close(images, expected_images, rtol=1e-5, atol=1e-5)
    assert images.std() > 0.01


def test_rollout_and_first_update_have_ratio_one(folder):
    check_first_update(load(folder, guidance_scale=2.0))


def test_exported_lora_loads_into_a_fresh_pipeline(folder, tmp_path):
    check_lora_export(
        load(folder), "zimage", lambda: ZImagePipeline.from_pretrained(folder, local_files_only=True),
        lambda pipe: ZImagePolicy(pipe, CPU, resolution=IMAGE_SIZE, max_sequence_length=TEXT_LENGTH), tmp_path / "lora",
    )


def test_recipe_validates_and_trains_a_step(folder, tmp_path):
    metrics = train_recipe_one_step(RECIPE, folder, IMAGE_SIZE, tmp_path / "run", [f"model.max_sequence_length={TEXT_LENGTH}"])
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"] and metrics["kl/old_new"] > 0


def test_loading_errors_name_the_path(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        ZImagePolicy.from_pretrained(tmp_path)
    sd3 = save_sd3_pipeline(tmp_path / "sd3")
    with pytest.raises(ConfigError, match="not a zimage pipeline"):
        ZImagePolicy.from_pretrained(sd3)
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        load(folder, guidance_scale=0.0)


def test_mogen_sample_writes_an_image_grid(folder, tmp_path):
    from typer.testing import CliRunner

    from mogen.cli import app

    out = tmp_path / "zimage.png"
    result = CliRunner().invoke(app, ["sample", "--model", str(folder), "--family", "zimage", "--resolution", str(IMAGE_SIZE),
                                      "--steps", "2", "--shift", "3", "-n", "2", "-p", "two red circles", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not list(tmp_path.glob("*.gif"))  # images: the grid only
    sde = CliRunner().invoke(app, ["sample", "--model", str(folder), "--family", "zimage", "--sampler", "sde", "-p", "x"])
    assert sde.exit_code == 2
