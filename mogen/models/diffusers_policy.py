"""DiffusersPolicy: the part of a diffusers-pipeline adapter that is the same for every family.

Every adapter over a diffusers pipeline (sd3.py, flux.py, flux2.py, qwenimage.py, zimage.py, wan.py) holds the same
things and loads the same way: a local folder only, everything frozen, the transformer's dtype read once, the text
encoders and the VAE on the CPU between uses when offloaded, decoded images in [0, 1]. That part lives here once.
What differs between families stays in the family's own file, next to its conventions docstring: the latent shape,
the prompt encoding, the velocity (timestep convention, guidance, packing) and the VAE's latent space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from mogen.models.common import check_pipeline_folder, freeze_and_place, load_local_pipeline, on_device

PolicyT = TypeVar("PolicyT", bound="DiffusersPolicy")


class DiffusersPolicy(ABC):
    """A FlowPolicy over a diffusers pipeline. Only `transformer` trains; the text encoders and the VAE are frozen.

    A family sets the class attributes below; its __init__ calls this one, then sets `latent_shape` and whatever
    its velocity needs; it writes `encode_prompts`, `velocity` and `decode_vae`.
    """

    family: ClassVar[str]  # model.family, as in mogen/models/registry.py
    pipeline_class: ClassVar[type]  # the diffusers pipeline a folder is loaded as (see `folder_pipeline_class`)
    transformer_class: ClassVar[str]  # the transformer model_index.json must name: another family's folder is refused
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)  # the pipeline's text encoders; absent ones skipped
    default_resolution: ClassVar[int | None] = None  # image side in pixels; None: default_sample_size x vae_scale_factor
    cfg_scale: ClassVar[bool] = True  # guidance_scale is a CFG scale (>= 1, 1 = off); False: any value (FLUX.1's embedding)

    latent_shape: tuple[int, ...]

    def __init__(
        self,
        pipeline: Any,
        device: torch.device | str,
        guidance_scale: float,
        resolution: int | None,
        max_sequence_length: int,
        offload: bool,
    ):
        """resolution: image side in pixels, None for the family's default (`self.resolution` holds the one used).
        offload: keep the text encoders and the VAE on the CPU, moving them to `device` only while they run."""
        if self.cfg_scale and guidance_scale < 1:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables classifier-free guidance), got {guidance_scale}")
        self.pipeline = pipeline
        self.transformer: torch.nn.Module = pipeline.transformer
        self.vae = pipeline.vae
        self.text_encoders = [getattr(pipeline, name) for name in self.text_encoder_names if getattr(pipeline, name) is not None]
        self.device = torch.device(device)
        self.dtype = pipeline.transformer.dtype  # read once: the trainer may wrap the transformer (DDP) later
        self.guidance_scale = guidance_scale
        self.resolution: int = resolution or self.default_resolution or pipeline.default_sample_size * pipeline.vae_scale_factor
        self.max_sequence_length = max_sequence_length
        self.offload = offload
        freeze_and_place(self.transformer, [self.vae, *self.text_encoders], self.device, offload)

    @classmethod
    def from_pretrained(
        cls: type[PolicyT],
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        guidance_scale: float | None = None,
        **options: Any,
    ) -> PolicyT:
        """Load a local pipeline folder of this family (never the hub) in `dtype` onto `device`.

        guidance_scale (None: the family's default) and `options` (resolution, max_sequence_length, offload; Wan's
        num_frames) go to the family's constructor, which documents them and their defaults.
        """
        folder = check_pipeline_folder(path, cls.family, cls.transformer_class)
        pipeline = load_local_pipeline(cls.folder_pipeline_class(folder), folder, dtype)
        if guidance_scale is not None:
            options["guidance_scale"] = guidance_scale
        return cls(pipeline, device, **options)

    @classmethod
    def folder_pipeline_class(cls, folder: Path) -> type:
        """The pipeline class to load a checked folder as: `pipeline_class` (FLUX.2 picks dev or klein from the folder)."""
        return cls.pipeline_class

    @property
    def guided(self) -> bool:
        """Classifier-free guidance is on: encode_prompts adds the negative prompt's embeddings, velocity runs them."""
        return self.cfg_scale and self.guidance_scale > 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, *latent_shape) -> images (B, 3, H, W), or videos (B, F, 3, H, W), float32 in [0, 1]."""
        with on_device([self.vae], self.device, self.offload):
            images = self.decode_vae(latents.to(self.device, self.vae.dtype))
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @abstractmethod
    def decode_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's output in [-1, 1] for latents already on the device in the VAE's dtype (undo the family's
        latent normalization, packing or patches, then `vae.decode`)."""
