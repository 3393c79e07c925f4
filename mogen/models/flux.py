"""FLUX.1 as a FlowPolicy: a FluxPipeline from a local folder, LoRA on its transformer.

Conventions (checked against the pipeline's own sampling loop in tests/test_sd3_flux.py):
    flow time t in [0, 1] is FLUX's sigma and is passed to the transformer as is (the pipeline's timestep / 1000;
    the transformer multiplies by 1000 inside);
    no classifier-free guidance pass: FLUX.1-dev is guidance-distilled and takes the scale as an embedding
    (the `guidance` vector); FLUX.1-schnell (guidance_embeds=False) takes none;
    `latent_shape` is the unpacked (C, H, W): the sampler, the rollout and the KL see ordinary latents, and
    `velocity` packs them into FLUX's sequence of 2x2 patches (B, H/2 * W/2, 4C) and unpacks the output.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from mogen.models.common import check_prompts, latent_size, on_device, schedule_shift
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy


class FluxPolicy(DiffusersPolicy):
    """The FlowPolicy of a FLUX.1 pipeline. Only `transformer` trains; everything else is frozen."""

    family = "flux"
    pipeline_class = FluxPipeline
    transformer_class = "FluxTransformer2DModel"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    cfg_scale = False  # the scale only feeds the distilled guidance embedding

    def __init__(self, pipeline: FluxPipeline, device: torch.device | str, guidance_scale: float = 3.5,
                 resolution: int | None = None, max_sequence_length: int = 512, offload: bool = False):
        """guidance_scale: the distilled guidance embedding's value (FLUX.1-dev: 3.5); ignored by FLUX.1-schnell.
        resolution: image side in pixels (default: the pipeline's default, 1024).
        max_sequence_length: T5 tokens (512 for FLUX.1-dev, 256 for schnell)."""
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        self.guidance_embeds = bool(pipeline.transformer.config.guidance_embeds)
        self.vae_scale_factor = pipeline.vae_scale_factor
        size = latent_size(self.resolution, pipeline.vae_scale_factor, 2)  # 2x2 packing needs even latent sides
        self.latent_shape: tuple[int, int, int] = (pipeline.transformer.config.in_channels // 4, size, size)
        self.scaling_factor = self.vae.config.scaling_factor
        self.shift_factor = self.vae.config.shift_factor or 0.0
        # positions (0, row, col) of the packed patches; the same for every sample, so computed once
        self.image_ids = pipeline._prepare_latent_image_ids(1, size // 2, size // 2, self.device, self.dtype)

    @property
    def schedule_shift(self) -> float:
        """The `sampler.shift` that reproduces the pipeline's own schedule at this resolution (3.16 at 1024 px)."""
        _, h, w = self.latent_shape
        return schedule_shift(self.pipeline.scheduler.config, (h // 2) * (w // 2))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """CLIP's pooled embedding and T5's token embeddings through the pipeline's own encode_prompt, batch-first.

        prompt_embeds (B, max_sequence_length, D_t5), pooled_prompt_embeds (B, D_clip). FLUX's text ids are all
        zeros and the same for every sample, so `velocity` builds them instead of carrying them per sample.
        """
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            embeds, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
            )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/2 * W/2, 4C), FLUX's token sequence of 2x2 latent patches."""
        b, c, h, w = latents.shape
        return self.pipeline._pack_latents(latents, b, c, h, w)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """The inverse of `pack`, back to (B, C, H, W)."""
        _, h, w = self.latent_shape
        return self.pipeline._unpack_latents(packed, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) on unpacked latents, float32."""
        embeds = cond["prompt_embeds"]
        guidance = torch.full_like(t, self.guidance_scale, dtype=torch.float32) if self.guidance_embeds else None
        out = self.transformer(
            hidden_states=self.pack(latents.to(self.dtype)),
            timestep=t.to(self.dtype),  # FLUX takes sigma itself (the pipeline passes timestep / 1000)
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(self.dtype),
            encoder_hidden_states=embeds.to(self.dtype),
            txt_ids=torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=self.dtype),
            img_ids=self.image_ids,
            return_dict=False,
        )[0]
        return self.unpack(out).float()

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized, unpacked latents (B, C, H, W) -> the VAE's images (B, 3, H*f, W*f) in [-1, 1]."""
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor, return_dict=False)[0]
