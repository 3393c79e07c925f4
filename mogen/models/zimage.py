"""Z-Image as a FlowPolicy: a ZImagePipeline from a local folder, LoRA on its single-stream DiT.

Conventions (checked against the pipeline's own sampling loop in tests/test_zimage.py):
    flow time t in [0, 1] is the scheduler's sigma; the transformer is trained the other way round, so its time
    is 1 - t (the pipeline's (1000 - timestep) / 1000) and it predicts x0 - eps: v = -transformer(x, 1 - t);
    the prompt is the Qwen3 encoder's second-to-last hidden state of the chat-templated prompt, one variable-length
    sequence per prompt (padding dropped); mogen keeps them padded to (B, L, D) with a (B, L) mask, so that the
    trainer can index the batch, and hands the transformer the unpadded list it expects;
    classifier-free guidance with mogen's scale g (1 = off): v = v_c + (g - 1)(v_c - v_u), which is the
    pipeline's `pos + guidance_scale * (pos - neg)` with guidance_scale = g - 1 (Z-Image-Turbo: 0, so g = 1);
    latents are (C, H, W) in the VAE's normalized space; the transformer sees each as a one-frame (C, 1, H, W).
"""

from __future__ import annotations

import torch
from diffusers import ZImagePipeline
from torch.nn.utils.rnn import pad_sequence

from mogen.models.common import check_prompts, latent_size, on_device, schedule_shift
from mogen.models.contract import Conditioning
from mogen.models.diffusers_policy import DiffusersPolicy


def pad_embeddings(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (L_i, D) sequences -> zero-padded (B, max L_i, D) and the (B, max L_i) mask of real tokens."""
    lengths = torch.tensor([len(e) for e in embeds], device=embeds[0].device)
    padded = pad_sequence(embeds, batch_first=True)
    mask = torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]
    return padded, mask


def unpad_embeddings(padded: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of `pad_embeddings`: the list of (L_i, D) sequences the transformer takes."""
    return [row[keep] for row, keep in zip(padded, mask)]


class ZImagePolicy(DiffusersPolicy):
    """The FlowPolicy of a Z-Image pipeline. Only `transformer` trains; everything else is frozen."""

    family = "zimage"
    pipeline_class = ZImagePipeline
    transformer_class = "ZImageTransformer2DModel"
    default_resolution = 1024  # the pipeline's default image side

    def __init__(self, pipeline: ZImagePipeline, device: torch.device | str, guidance_scale: float = 1.0,
                 resolution: int | None = None, max_sequence_length: int = 512, offload: bool = False):
        """guidance_scale: mogen's CFG scale g (1 = off, Z-Image-Turbo's setting); the pipeline's is g - 1.
        resolution: image side in pixels (default 1024, the pipeline's).
        max_sequence_length: text tokens of the chat-templated prompt (512, the pipeline's)."""
        super().__init__(pipeline, device, guidance_scale, resolution, max_sequence_length, offload)
        size = latent_size(self.resolution, pipeline.vae_scale_factor, 2)  # 2x2 patches need even latent sides
        self.latent_shape: tuple[int, int, int] = (pipeline.transformer.config.in_channels, size, size)
        self.scaling_factor = self.vae.config.scaling_factor
        self.shift_factor = self.vae.config.shift_factor or 0.0

    @property
    def schedule_shift(self) -> float:
        """The `sampler.shift` that reproduces the pipeline's own schedule (3.0 for Z-Image-Turbo)."""
        _, h, w = self.latent_shape
        return schedule_shift(self.pipeline.scheduler.config, (h // 2) * (w // 2))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """The pipeline's own encode_prompt, padded: prompt_embeds (B, L, D) and prompt_mask (B, L) bool; with
        guidance also the empty prompt's negative_prompt_embeds / negative_prompt_mask, one copy per sample."""
        prompts = check_prompts(prompts)
        with on_device(self.text_encoders, self.device, self.offload):
            embeds, negative = self.pipeline.encode_prompt(
                prompt=prompts, device=self.device, do_classifier_free_guidance=self.guided,
                max_sequence_length=self.max_sequence_length,
            )
        cond = dict(zip(("prompt_embeds", "prompt_mask"), pad_embeddings(embeds)))
        if self.guided:
            cond.update(zip(("negative_prompt_embeds", "negative_prompt_mask"), pad_embeddings(negative)))
        return cond

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x_t, t) in float32; guided whenever `cond` carries negative embeddings."""
        captions = unpad_embeddings(cond["prompt_embeds"].to(self.dtype), cond["prompt_mask"])
        x, model_time = latents.to(self.dtype), 1 - t.float()  # Z-Image's time runs from noise (0) to data (1)
        guided = "negative_prompt_embeds" in cond
        if guided:  # one forward on [cond; uncond], the pipeline's order
            captions += unpad_embeddings(cond["negative_prompt_embeds"].to(self.dtype), cond["negative_prompt_mask"])
            x, model_time = torch.cat([x, x]), torch.cat([model_time, model_time])
        out = self.transformer(list(x.unsqueeze(2).unbind(0)), model_time, captions, return_dict=False)[0]
        out = torch.stack([o.float() for o in out]).squeeze(2)
        if guided:
            v_cond, v_uncond = out.chunk(2)
            out = v_cond + (self.guidance_scale - 1) * (v_cond - v_uncond)
        return -out  # the transformer predicts x0 - eps; mogen's velocity is eps - x0

    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B, C, H, W) -> the VAE's images (B, 3, H*f, W*f) in [-1, 1]."""
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor, return_dict=False)[0]
