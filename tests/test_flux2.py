"""FLUX.2 dev and klein on tiny random-weight pipelines saved to disk and loaded back the way a user's folder is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline

from family_checks import CPU, PROMPTS, check_first_update, check_frozen, check_lora_export, ode_latents, run_pipeline, train_recipe_one_step
from mogen.config import ConfigError, load_recipe
from mogen.models.flux2 import Flux2Policy, text_ids
from mogen.samples import generate
from tiny_families import save_flux2_klein_pipeline, save_flux2_pipeline, save_zimage_pipeline
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS

RECIPE = Path(__file__).parents[1] / "recipes" / "flux2" / "klein_base_pickscore_dppo.yaml"
TEXT_LENGTH = {"dev": 256, "klein": 64}  # dev's system message alone is ~180 byte tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"dev": save_flux2_pipeline(root / "dev"), "klein": save_flux2_klein_pipeline(root / "klein")}


def load(folder: Path, variant: str, guidance_scale: float = 4.0) -> Flux2Policy:
    return Flux2Policy.from_pretrained(folder, CPU, torch.float32, guidance_scale, resolution=IMAGE_SIZE,
                                       max_sequence_length=TEXT_LENGTH[variant])


@pytest.mark.parametrize(("variant", "guidance_scale", "distilled"),
                         [("dev", 4.0, False), ("klein", 4.0, False), ("klein", 4.0, True)],
                         ids=["dev-embedded-guidance", "klein-base-cfg", "klein-distilled"])
def test_sampling_reproduces_the_pipeline(folders, tmp_path, variant, guidance_scale, distilled):
    """Patch latents normalized by the VAE's batch norm, timestep = t, dev's guidance embedding or klein base's
    CFG pass (none for the distilled klein), and the empirical mu of (tokens, steps): as the pipelines do."""
    folder = save_flux2_klein_pipeline(tmp_path / "klein", is_distilled=True) if distilled else folders[variant]
    policy = load(folder, variant, guidance_scale)
    assert policy.latent_shape == (4 * LATENT_CHANNELS, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    check_frozen(policy)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, TEXT_LENGTH[variant], 24)
    assert ("negative_prompt_embeds" in cond) == (variant == "klein" and not distilled)
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(policy.unpack(policy.pack(noise)), noise, rtol=0, atol=0)

    pipe = (Flux2Pipeline if variant == "dev" else Flux2KleinPipeline).from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    num_steps = 3
    run = dict(prompt=list(PROMPTS), num_inference_steps=num_steps, height=IMAGE_SIZE, width=IMAGE_SIZE, latents=noise,
               guidance_scale=guidance_scale, max_sequence_length=TEXT_LENGTH[variant])
    expected_images, packed_latents = run_pipeline(pipe, run)
    shift = policy.schedule_shift(num_steps)  # e^mu, mu = compute_empirical_mu(64 tokens, 3 steps) = 1.957
    assert shift == pytest.approx(7.077, abs=1e-3)
    torch.testing.assert_close(ode_latents(policy, noise, num_steps, shift), policy.unpack(packed_latents), rtol=1e-5, atol=1e-5)
    images = generate(policy, PROMPTS, num_steps, shift, torch.Generator().manual_seed(3), CPU)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and images.std() > 0.01
    torch.testing.assert_close(images, expected_images, rtol=1e-5, atol=1e-5)

    x, t = noise, torch.tensor([0.8, 0.4])
    with torch.no_grad():
        v = policy.velocity(x, t, cond)
        policy.guidance_scale = 1.5
        changed = (policy.velocity(x, t, cond) - v).abs().max()
    assert (changed > 1e-4) == (not distilled)  # the scale reaches dev through the embedding, klein base through CFG


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_rollout_and_first_update_have_ratio_one(folders, variant):
    check_first_update(load(folders[variant], variant))


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_exported_lora_loads_into_a_fresh_pipeline(folders, tmp_path, variant):
    pipeline_class = Flux2Pipeline if variant == "dev" else Flux2KleinPipeline
    check_lora_export(
        load(folders[variant], variant), "flux2", lambda: pipeline_class.from_pretrained(folders[variant], local_files_only=True),
        lambda pipe: Flux2Policy(pipe, CPU, resolution=IMAGE_SIZE, max_sequence_length=TEXT_LENGTH[variant]), tmp_path / "lora",
        target_modules=load_recipe(RECIPE).lora.target_modules,  # the recipe's: single-stream blocks' fused projection too
    )


def test_recipe_validates_and_trains_a_step(folders, tmp_path):
    metrics = train_recipe_one_step(RECIPE, folders["klein"], IMAGE_SIZE, tmp_path / "run", ["model.max_sequence_length=64"])
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"] and metrics["kl/old_new"] > 0


def test_loading_errors_name_the_path(folders, tmp_path):
    with pytest.raises(ConfigError, match="not a flux2 pipeline"):
        Flux2Policy.from_pretrained(save_zimage_pipeline(tmp_path / "zimage"))
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 4"):
        Flux2Policy.from_pretrained(folders["klein"], resolution=30)


def test_text_ids_are_the_pipelines():
    embeds = torch.zeros(2, 7, 24)
    assert torch.equal(text_ids(7, CPU), Flux2KleinPipeline._prepare_text_ids(embeds)[0])
