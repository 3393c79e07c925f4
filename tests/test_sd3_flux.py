"""SD3 and FLUX adapters on tiny random-weight pipelines saved to disk and loaded back the way a user's folder is.

The adapters must reproduce the diffusers pipelines' own sampling (timestep convention, CFG, FLUX's packing and
guidance embedding, VAE scaling/shift), and run the trainer's rollout and update with ratio exactly 1 at first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from family_checks import CPU, PROMPTS, check_first_update, check_frozen, ode_latents, run_pipeline
from mogen.config import ConfigError
from mogen.models.flux import FluxPolicy
from mogen.models.sd3 import SD3Policy
from mogen.samples import generate
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS, save_flux_pipeline, save_sd3_pipeline

T5_LENGTH = 16


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sd3_pipeline(tmp_path_factory.mktemp("models") / "sd3")


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_flux_pipeline(tmp_path_factory.mktemp("models") / "flux")


def load_sd3(folder: Path, guidance_scale: float) -> SD3Policy:
    return SD3Policy.from_pretrained(folder, CPU, torch.float32, guidance_scale, max_sequence_length=T5_LENGTH)


def load_flux(folder: Path, guidance_scale: float = 3.5) -> FluxPolicy:
    return FluxPolicy.from_pretrained(
        folder, CPU, torch.float32, guidance_scale, resolution=IMAGE_SIZE, max_sequence_length=T5_LENGTH
    )


def test_sd3_loads_with_frozen_encoders_and_generates_images(sd3_folder):
    policy = load_sd3(sd3_folder, guidance_scale=4.0)
    assert policy.latent_shape == (LATENT_CHANNELS, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    check_frozen(policy)
    assert len(policy.text_encoders) == 3
    cond = policy.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape == (2, 77 + T5_LENGTH, 32) and cond["pooled_prompt_embeds"].shape == (2, 32)
    assert cond["negative_prompt_embeds"].shape == cond["prompt_embeds"].shape
    torch.testing.assert_close(cond["negative_prompt_embeds"][0], cond["negative_prompt_embeds"][1])  # both the empty prompt
    images = generate(policy, PROMPTS, 3, 3.0, torch.Generator().manual_seed(0), CPU)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01
    assert not load_sd3(sd3_folder, 1.0).encode_prompts(PROMPTS).keys() & {"negative_prompt_embeds"}  # no CFG at g = 1


def test_sd3_cfg_is_one_doubled_forward(sd3_folder):
    """v = v_u + g (v_c - v_u): with g = 1 it is the conditional velocity, with g > 1 the pipeline's formula."""
    policy = load_sd3(sd3_folder, guidance_scale=1.0)
    cond = load_sd3(sd3_folder, guidance_scale=2.0).encode_prompts(PROMPTS)  # carries the negative embeddings
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.3])
    only_cond = {k: cond[k] for k in ("prompt_embeds", "pooled_prompt_embeds")}
    only_uncond = {"prompt_embeds": cond["negative_prompt_embeds"], "pooled_prompt_embeds": cond["negative_pooled_prompt_embeds"]}
    with torch.no_grad():
        v_cond, v_uncond = policy.velocity(x, t, only_cond), policy.velocity(x, t, only_uncond)
        guided_1 = policy.velocity(x, t, cond)
        policy.guidance_scale = 5.0
        guided_5 = policy.velocity(x, t, cond)
    torch.testing.assert_close(guided_1, v_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided_5, v_uncond + 5.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)
    assert (guided_5 - v_cond).abs().max() > 1e-3


def test_sd3_velocity_equals_the_pipelines_transformer_call(sd3_folder):
    """Same embeddings (the pipeline's encode_prompt), timestep = t * 1000, same output."""
    policy = load_sd3(sd3_folder, guidance_scale=1.0)
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folder, local_files_only=True)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_LENGTH)
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.75, 0.2])
    with torch.no_grad():
        expected = pipe.transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=embeds, pooled_projections=pooled).sample
        actual = policy.velocity(x, t, policy.encode_prompts(PROMPTS))
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def test_sd3_sampling_reproduces_the_pipeline(sd3_folder):
    """The pipeline's loop (shift 3 scheduler, CFG 3.5) and mogen's ODE sampler give the same latents and images."""
    policy = load_sd3(sd3_folder, guidance_scale=3.5)
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert policy.schedule_shift == 3.0  # the tiny pipeline's scheduler is configured as SD3.5's
    num_steps = 4
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    run = dict(prompt=PROMPTS, sigmas=torch.linspace(1, 1 / num_steps, num_steps).tolist(), height=IMAGE_SIZE,
               width=IMAGE_SIZE, latents=noise, guidance_scale=3.5, max_sequence_length=T5_LENGTH)
    expected_images, expected_latents = run_pipeline(pipe, run)
    torch.testing.assert_close(ode_latents(policy, noise, num_steps, shift=3.0), expected_latents, rtol=1e-5, atol=1e-5)
    images = generate(policy, PROMPTS, num_steps, 3.0, torch.Generator().manual_seed(3), CPU)
    torch.testing.assert_close(images, expected_images, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_flux_sampling_reproduces_the_pipeline(tmp_path, guidance_embeds):
    """Packed latents, timestep = t, the guidance embedding (dev) or none (schnell), the dynamic shift: as FluxPipeline."""
    folder = save_flux_pipeline(tmp_path / "flux", guidance_embeds=guidance_embeds)
    policy = load_flux(folder, guidance_scale=3.5)
    assert policy.latent_shape == (LATENT_CHANNELS, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert len(policy.text_encoders) == 2
    check_frozen(policy)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, T5_LENGTH, 32) and cond["pooled_prompt_embeds"].shape == (2, 16)
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(policy.unpack(policy.pack(noise)), noise, rtol=0, atol=0)

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    num_steps = 3
    run = dict(prompt=PROMPTS, num_inference_steps=num_steps, height=IMAGE_SIZE, width=IMAGE_SIZE,
               latents=policy.pack(noise), guidance_scale=3.5, max_sequence_length=T5_LENGTH)
    expected_images, packed_latents = run_pipeline(pipe, run)
    expected_latents = policy.unpack(packed_latents)
    shift = policy.schedule_shift  # e^mu, mu = calculate_shift(64 image tokens) = 0.4675
    assert shift == pytest.approx(1.596, abs=1e-3)
    torch.testing.assert_close(ode_latents(policy, noise, num_steps, shift), expected_latents, rtol=1e-5, atol=1e-5)
    images = generate(policy, PROMPTS, num_steps, shift, torch.Generator().manual_seed(4), CPU)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, expected_images, rtol=1e-5, atol=1e-5)

    x, t = noise, torch.tensor([0.8, 0.4])
    with torch.no_grad():
        v = policy.velocity(x, t, cond)
        policy.guidance_scale = 1.0
        changed = (policy.velocity(x, t, cond) - v).abs().max()
    assert (changed > 1e-4) == guidance_embeds  # the scale reaches the model only through the embedding


def test_offload_keeps_encoders_on_cpu_and_gives_the_same_result(sd3_folder):
    policy = SD3Policy.from_pretrained(sd3_folder, CPU, guidance_scale=2.0, max_sequence_length=T5_LENGTH, offload=True)
    reference = load_sd3(sd3_folder, guidance_scale=2.0)
    torch.testing.assert_close(policy.encode_prompts(PROMPTS), reference.encode_prompts(PROMPTS), rtol=0, atol=0)
    assert all(p.device.type == "cpu" for m in [policy.vae, *policy.text_encoders] for p in m.parameters())


def test_loading_errors_name_the_path(sd3_folder, flux_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SD3Policy.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        FluxPolicy.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(str(sd3_folder)) + ".*not a flux pipeline"):
        FluxPolicy.from_pretrained(sd3_folder)
    with pytest.raises(ConfigError, match=re.escape(str(flux_folder)) + ".*not a sd3 pipeline"):
        SD3Policy.from_pretrained(flux_folder)
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 4"):
        FluxPolicy.from_pretrained(flux_folder, resolution=30)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_rollout_and_first_update_have_ratio_one(family, sd3_folder, flux_folder):
    rollout = check_first_update(load_sd3(sd3_folder, 2.0) if family == "sd3" else load_flux(flux_folder))
    assert rollout.images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
