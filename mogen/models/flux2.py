"""FLUX.2 as a FlowPolicy: a Flux2Pipeline (dev) or Flux2KleinPipeline (klein) from a local folder, LoRA on its
Flux2Transformer2DModel.

Conventions (checked against both pipelines' own sampling loops in tests/test_flux2.py):
    flow time t in [0, 1] is the scheduler's sigma and is passed to the transformer as is (the pipeline's
    timestep / 1000);
    guidance as each pipeline does it: FLUX.2-dev is guidance-distilled and takes the scale as an embedding (no CFG
    pass); klein takes none, and the undistilled klein base uses classifier-free guidance against the empty
    prompt, v = v_u + g (v_c - v_u) (g = 1: off); the step-distilled klein ignores the scale;
    prompts: the text encoder's hidden states of three layers, concatenated per token (Mistral-3 for dev, Qwen3
    for klein), through the pipeline's own encode_prompt;
    latents: `latent_shape` is (4C, H/2, W/2), the VAE latents cut into 2x2 patches and normalized by the VAE's
    batch-norm statistics, which is the space the pipeline samples in; `velocity` flattens them into the
    transformer's token sequence (B, H/2 * W/2, 4C) and back; `decode` undoes the normalization and the patches;
    schedule: the pipeline's empirical mu depends on the token count and on the number of steps, so the shift that
    reproduces it is `schedule_shift(num_steps)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

from mogen.config import ConfigError
from mogen.models.common import MODEL_INDEX, check_prompts, latent_size, on_device
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy

PIPELINES = {"Flux2Pipeline": Flux2Pipeline, "Flux2KleinPipeline": Flux2KleinPipeline}


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """The (length, 4) positions (0, 0, 0, token) of the text tokens, built on `device` (the pipeline's _prepare_text_ids)."""
    zeros = torch.zeros(length, dtype=torch.long, device=device)
    return torch.stack([zeros, zeros, zeros, torch.arange(length, device=device)], dim=-1)


class Flux2Policy(DiffusersPolicy):
    """The FlowPolicy of a FLUX.2 dev or klein pipeline. Only `transformer` trains; everything else is frozen."""

    family = "flux2"
    transformer_class = "Flux2Transformer2DModel"

    def __init__(self, pipeline: Flux2Pipeline | Flux2KleinPipeline, device: torch.device | str, guidance_scale: float = 4.0,
                 resolution: int | None = None, max_sequence_length: int = 512, offload: bool = False):
        """guidance_scale: dev's guidance embedding (4.0) or klein base's CFG scale (4.0; 1 = off).
        resolution: image side in pixels (default: the pipeline's default, 1024).
        max_sequence_length: text tokens (512, the pipelines' default)."""
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        self.guidance_embeds = bool(pipeline.transformer.config.guidance_embeds)
        # klein base: true CFG; dev (embedded guidance) and step-distilled klein: none
        self.cfg_capable = isinstance(pipeline, Flux2KleinPipeline) and not pipeline.config.is_distilled
        size = latent_size(self.resolution, pipeline.vae_scale_factor, 2) // 2  # side of the 2x2-patch grid
        self.latent_shape: tuple[int, int, int] = (pipeline.transformer.config.in_channels, size, size)
        # positions (0, row, col, 0) of the image tokens; the same for every sample, so computed once
        self.image_ids = pipeline._prepare_latent_ids(torch.empty(1, *self.latent_shape))[0].to(self.device)

    @classmethod
    def folder_pipeline_class(cls, folder: Path) -> type:
        """Flux2Pipeline (dev) or Flux2KleinPipeline (klein), as the folder's model_index.json names it."""
        class_name = json.loads((folder / MODEL_INDEX).read_text()).get("_class_name")
        if class_name not in PIPELINES:
            raise ConfigError(f"{folder}: a {class_name}; model.family 'flux2' loads a {' or a '.join(PIPELINES)}")
        return PIPELINES[class_name]

    @property
    def guided(self) -> bool:
        """Only klein base runs a negative-prompt pass; dev embeds the scale and the step-distilled klein ignores it."""
        return self.cfg_capable and self.guidance_scale > 1

    def schedule_shift(self, num_steps: int) -> float:
        """The `sampler.shift` s that reproduces the pipeline's schedule for `num_steps` steps at this resolution.

        With dynamic shifting the pipeline shifts t' = e^mu / (e^mu + 1/t - 1), mu = compute_empirical_mu(tokens,
        num_steps): the shift map with s = e^mu (s = mu for the 'linear' variant); otherwise s is the config's.
        """
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return float(config.get("shift", 1.0))
        _, h, w = self.latent_shape
        mu = compute_empirical_mu(h * w, num_steps)
        return mu if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (B, max_sequence_length, 3 D) through the pipeline's own encode_prompt; with CFG also the
        empty prompt's negative_prompt_embeds, one copy per sample. The text ids (0, 0, 0, token) are the same for
        every sample, so `velocity` builds them."""
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            embeds, _ = self.pipeline.encode_prompt(prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length)
            cond = {"prompt_embeds": embeds}
            if self.guided:
                negative, _ = self.pipeline.encode_prompt(
                    prompt=[""] * len(prompts), device=self.device, max_sequence_length=self.max_sequence_length
                )
                cond["negative_prompt_embeds"] = negative
        return cond

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4C, h, w) -> (B, h * w, 4C), the transformer's token sequence in raster order."""
        return latents.flatten(2).transpose(1, 2)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """The inverse of `pack`."""
        return tokens.transpose(1, 2).reshape(len(tokens), *self.latent_shape)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) on (B, 4C, h, w) latents, float32; guided whenever `cond` carries negative embeddings."""
        x, timestep, embeds = self.pack(latents.to(self.dtype)), t.to(self.dtype), cond["prompt_embeds"].to(self.dtype)
        guided = "negative_prompt_embeds" in cond
        if guided:  # one forward on [uncond; cond]
            x, timestep = torch.cat([x, x]), torch.cat([timestep, timestep])
            embeds = torch.cat([cond["negative_prompt_embeds"].to(self.dtype), embeds])
        guidance = torch.full((len(x),), self.guidance_scale, device=x.device, dtype=torch.float32) if self.guidance_embeds else None
        out = self.transformer(
            hidden_states=x,
            timestep=timestep,
            guidance=guidance,
            encoder_hidden_states=embeds,
            txt_ids=text_ids(embeds.shape[1], x.device),
            img_ids=self.image_ids,
            return_dict=False,
        )[0]
        v = self.unpack(out.float())
        if not guided:
            return v
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized patch latents (B, 4C, h, w) -> the VAE's images (B, 3, 2h f, 2w f) in [-1, 1]."""
        bn = self.vae.bn
        z = latents * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps) + bn.running_mean.view(1, -1, 1, 1)
        return self.vae.decode(self.pipeline._unpatchify_latents(z), return_dict=False)[0]
