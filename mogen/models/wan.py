"""Wan 2.1 text-to-video as a FlowPolicy: a WanPipeline from a local folder, LoRA on its WanTransformer3DModel.

Conventions (checked against the pipeline's own sampling loop in tests/test_wan.py):
    latents carry a time axis: `latent_shape` is (C, F_latent, H/8, W/8) with F_latent = (num_frames - 1) / 4 + 1
    (the VAE's temporal factor), in the VAE's normalized space (the pipeline's (x - mean) / std); the sampler, the
    rollout and the KL treat them like image latents with one more axis;
    flow time t in [0, 1] is the scheduler's sigma; the transformer's timestep is sigma * 1000;
    classifier-free guidance against the empty prompt (the pipeline's default negative prompt),
    v = v_u + g (v_c - v_u) in one forward on the doubled batch; g = 1 is off;
    the prompt is UMT5's last hidden state, zero-padded to max_sequence_length as the pipeline does;
    `decode` returns videos (B, F, 3, H, W) in [0, 1]: image scorers see sampled frames (mogen.rewards).
Not covered: Wan 2.2's second (low-noise) transformer and per-token timesteps (the TI2V-5B), which train two
adapters or condition differently. Released Wan folders ship a multistep UniPC scheduler; mogen samples with
Euler/SDE steps on the same flow shift (the scheduler's `flow_shift` or `shift`), as the peers' Wan recipes do.
"""

from __future__ import annotations

import torch
from diffusers import WanPipeline

from mogen.config import ConfigError
from mogen.models.common import check_prompts, latent_size, latents_mean_std, on_device
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy


class WanPolicy(DiffusersPolicy):
    """The FlowPolicy of a Wan text-to-video pipeline. Only `transformer` trains; everything else is frozen."""

    family = "wan"
    pipeline_class = WanPipeline
    transformer_class = "WanTransformer3DModel"
    default_resolution = 480  # square frame side in pixels

    def __init__(self, pipeline: WanPipeline, device: torch.device | str, guidance_scale: float = 5.0, resolution: int | None = None,
                 num_frames: int = 81, max_sequence_length: int = 512, offload: bool = False):
        """guidance_scale: the CFG scale (5.0, the pipeline's; 1 = off).
        resolution: square frame side in pixels (default 480).
        num_frames: frames per video, 4 k + 1 (81, the pipeline's default).
        max_sequence_length: UMT5 tokens (512, the pipeline's)."""
        if pipeline.transformer_2 is not None or pipeline.config.expand_timesteps:
            raise ConfigError("model.family 'wan' trains Wan 2.1-style pipelines: one transformer, one timestep per sample")
        temporal = pipeline.vae_scale_factor_temporal
        if num_frames < 1 or (num_frames - 1) % temporal:
            raise ValueError(f"num_frames must be {temporal} k + 1 for this VAE (e.g. {4 * temporal + 1}), got {num_frames}")
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        self.num_frames = num_frames
        size = latent_size(self.resolution, pipeline.vae_scale_factor_spatial, pipeline.transformer.config.patch_size[1])
        frames = (num_frames - 1) // temporal + 1
        self.latent_shape: tuple[int, int, int, int] = (pipeline.transformer.config.in_channels, frames, size, size)
        self.latents_mean, self.latents_std = latents_mean_std(self.vae)

    @property
    def schedule_shift(self) -> float:
        """The scheduler's flow shift (UniPC's `flow_shift`, Euler's `shift`): 3.0 at 480p, 5.0 at 720p."""
        config = self.pipeline.scheduler.config
        return float(config.get("flow_shift") or config.get("shift", 1.0))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """prompt_embeds (B, max_sequence_length, D) through the pipeline's own encode_prompt; with guidance also the
        empty prompt's negative_prompt_embeds, one copy per sample."""
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            embeds, negative = self.pipeline.encode_prompt(
                prompt=prompts, do_classifier_free_guidance=self.guided, max_sequence_length=self.max_sequence_length,
                device=self.device,
            )
        cond = {"prompt_embeds": embeds}
        if self.guided:
            cond["negative_prompt_embeds"] = negative
        return cond

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) on (B, C, F, h, w) latents, float32; guided whenever `cond` carries negative embeddings."""
        x, timestep, embeds = latents.to(self.dtype), t.float() * 1000, cond["prompt_embeds"].to(self.dtype)
        guided = "negative_prompt_embeds" in cond
        if guided:  # one forward on [uncond; cond]
            x, timestep = torch.cat([x, x]), torch.cat([timestep, timestep])
            embeds = torch.cat([cond["negative_prompt_embeds"].to(self.dtype), embeds])
        out = self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0].float()
        if not guided:
            return out
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, F_latent, h, w) -> the VAE's videos (B, num_frames, 3, H, W) in [-1, 1]."""
        z = latents * self.latents_std.to(latents) + self.latents_mean.to(latents)
        return self.vae.decode(z, return_dict=False)[0].transpose(1, 2)  # the VAE's (B, 3, F, H, W), frames first
