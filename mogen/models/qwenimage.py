"""Qwen-Image as a FlowPolicy: a QwenImagePipeline from a local folder, LoRA on its MMDiT.

Conventions (checked against the pipeline's own sampling loop in tests/test_qwenimage.py):
    flow time t in [0, 1] is the scheduler's sigma and is passed to the transformer as is (the pipeline's
    timestep / 1000);
    the prompt is Qwen2.5-VL's last hidden state of the templated prompt, the template's system part dropped,
    padded to the batch's longest prompt with a mask (the mask is always passed, so a sample's velocity does not
    depend on which other prompts share its batch);
    true classifier-free guidance, two forwards as the pipeline does: c = v_u + g (v_c - v_u), then rescaled
    token by token to the conditional norm, v = c ||v_c|| / ||c|| (norms over each packed 2x2 patch's channels);
    g = 1 is off; the negative prompt is " " (the model card's "no negative prompt");
    `latent_shape` is the unpacked (C, H, W) in the VAE's normalized space (the pipeline's (x - mean) / std);
    `velocity` packs them into 2x2-patch tokens (B, H/2 * W/2, 4C) and back, `decode` denormalizes and runs the
    VAE on one-frame video latents (B, C, 1, H, W).
Schedule: the pipeline's dynamic shift is `schedule_shift`; Qwen-Image's released scheduler also stretches the
schedule to end at sigma = shift_terminal (0.02) before the final step to 0, which mogen's sampler (one shift for
the whole schedule) does not do.
"""

from __future__ import annotations

import torch
from diffusers import QwenImagePipeline

from mogen.models.common import check_prompts, latent_size, latents_mean_std, on_device, schedule_shift
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy

NEGATIVE_PROMPT = " "


class QwenImagePolicy(DiffusersPolicy):
    """The FlowPolicy of a Qwen-Image pipeline. Only `transformer` trains; everything else is frozen."""

    family = "qwenimage"
    pipeline_class = QwenImagePipeline
    transformer_class = "QwenImageTransformer2DModel"

    def __init__(self, pipeline: QwenImagePipeline, device: torch.device | str, guidance_scale: float = 4.0,
                 resolution: int | None = None, max_sequence_length: int = 512, offload: bool = False):
        """guidance_scale: the true CFG scale (the pipeline's true_cfg_scale, 4.0; 1 = off).
        resolution: image side in pixels (default: the pipeline's default, 1024).
        max_sequence_length: prompt tokens kept after the template (512, the pipeline's)."""
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        self.vae_scale_factor = pipeline.vae_scale_factor
        size = latent_size(self.resolution, pipeline.vae_scale_factor, 2)  # 2x2 packing needs even latent sides
        self.latent_shape: tuple[int, int, int] = (pipeline.transformer.config.in_channels // 4, size, size)
        self.img_shapes = [(1, size // 2, size // 2)]  # frames, rows, columns of the token grid, per sample
        self.latents_mean, self.latents_std = latents_mean_std(self.vae)

    @property
    def schedule_shift(self) -> float:
        """The `sampler.shift` of the pipeline's dynamic shift at this resolution (e^mu, mu from the token count)."""
        _, h, w = self.latent_shape
        return schedule_shift(self.pipeline.scheduler.config, (h // 2) * (w // 2))

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self.pipeline.encode_prompt(prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length)
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device) if mask is None else mask.bool()
        return embeds, mask

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (B, L, D) with prompt_mask (B, L) bool; with guidance also the negative prompt's
        negative_prompt_embeds / negative_prompt_mask, one copy per sample."""
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            cond = dict(zip(("prompt_embeds", "prompt_mask"), self._encode(prompts)))
            if self.guided:
                cond.update(zip(("negative_prompt_embeds", "negative_prompt_mask"), self._encode([NEGATIVE_PROMPT] * len(prompts))))
        return cond

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/2 * W/2, 4C), the sequence of 2x2 latent patches."""
        b, c, h, w = latents.shape
        return self.pipeline._pack_latents(latents, b, c, h, w)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """The inverse of `pack`, back to (B, C, H, W)."""
        _, h, w = self.latent_shape
        f = self.vae_scale_factor
        return self.pipeline._unpack_latents(packed, h * f, w * f, f).squeeze(2)

    def _transformer(self, x: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=embeds.to(self.dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=self.img_shapes * len(x),
            return_dict=False,
        )[0].float()

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) on unpacked latents, float32; guided whenever `cond` carries negative embeddings."""
        x, timestep = self.pack(latents.to(self.dtype)), t.to(self.dtype)
        v = self._transformer(x, timestep, cond["prompt_embeds"], cond["prompt_mask"])
        if "negative_prompt_embeds" in cond:
            v_uncond = self._transformer(x, timestep, cond["negative_prompt_embeds"], cond["negative_prompt_mask"])
            guided = v_uncond + self.guidance_scale * (v - v_uncond)
            v = guided * (v.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
        return self.unpack(v)

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized, unpacked latents (B, C, H, W) -> the VAE's images (B, 3, H*f, W*f) in [-1, 1]."""
        z = latents[:, :, None]  # one-frame video latents (B, C, 1, H, W)
        z = z * self.latents_std.to(z) + self.latents_mean.to(z)
        return self.vae.decode(z, return_dict=False)[0][:, :, 0]
