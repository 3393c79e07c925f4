"""Stable Diffusion 3 / 3.5 as a FlowPolicy: a StableDiffusion3Pipeline from a local folder, LoRA on its MMDiT.

Conventions (checked against the pipeline's own sampling loop in tests/test_sd3_flux.py):
    flow time t in [0, 1] is SD3's sigma; the transformer's timestep is sigma * 1000 (num_train_timesteps);
    classifier-free guidance: v = v_uncond + g (v_cond - v_uncond), uncond = the empty prompt, both halves in one
    forward on a doubled batch ordered [uncond, cond] as the pipeline does;
    latents are (C, H, W) in the VAE's normalized space: decode computes x / scaling_factor + shift_factor.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from mogen.models.common import check_prompts, latent_size, on_device, schedule_shift
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy


class SD3Policy(DiffusersPolicy):
    """The FlowPolicy of an SD3-family pipeline. Only `transformer` trains; everything else is frozen."""

    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    transformer_class = "SD3Transformer2DModel"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pipeline: StableDiffusion3Pipeline, device: torch.device | str, guidance_scale: float = 1.0,
                 resolution: int | None = None, max_sequence_length: int = 256, offload: bool = False):
        """guidance_scale: the CFG scale (1 = off). resolution: image side in pixels (default: the transformer's
        sample_size x the VAE factor, 1024 for SD3.5). max_sequence_length: T5 tokens."""
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        config = pipeline.transformer.config
        self.patch_size = config.patch_size
        size = latent_size(self.resolution, pipeline.vae_scale_factor, config.patch_size)
        self.latent_shape: tuple[int, int, int] = (config.in_channels, size, size)
        self.scaling_factor = self.vae.config.scaling_factor
        self.shift_factor = self.vae.config.shift_factor or 0.0

    @property
    def schedule_shift(self) -> float:
        """The `sampler.shift` that reproduces the pipeline's own schedule (3.0 for SD3.5)."""
        _, h, w = self.latent_shape
        tokens = (h // self.patch_size) * (w // self.patch_size)
        return schedule_shift(self.pipeline.scheduler.config, tokens)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """The three text encoders' embeddings through the pipeline's own encode_prompt, batch-first.

        prompt_embeds (B, 77 + T5 length, D), pooled_prompt_embeds (B, D_pooled); with guidance also the empty
        prompt's negative_prompt_embeds and negative_pooled_prompt_embeds, repeated per sample so that the
        trainer's minibatch indexing keeps them aligned.
        """
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            embeds, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=self.guided,
                max_sequence_length=self.max_sequence_length,
            )
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.guided:
            cond.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return cond

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) in float32; guided whenever `cond` carries negative embeddings."""
        x = latents.to(self.dtype)
        timestep = t.float() * 1000  # SD3's timestep = sigma * num_train_timesteps, float32 as the pipeline passes it
        embeds, pooled = cond["prompt_embeds"], cond["pooled_prompt_embeds"]
        guided = "negative_prompt_embeds" in cond
        if guided:  # one forward on [uncond; cond]
            x, timestep = torch.cat([x, x]), torch.cat([timestep, timestep])
            embeds = torch.cat([cond["negative_prompt_embeds"], embeds])
            pooled = torch.cat([cond["negative_pooled_prompt_embeds"], pooled])
        out = self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=embeds.to(self.dtype),
            pooled_projections=pooled.to(self.dtype),
            return_dict=False,
        )[0].float()
        if not guided:
            return out
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, H, W) -> the VAE's images (B, 3, H*f, W*f) in [-1, 1]."""
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor, return_dict=False)[0]
