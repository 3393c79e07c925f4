"""The model families mogen knows: adding a family is its adapter file plus one line in FAMILIES.

Names are strings ("module:Class") so that reading the registry imports nothing: the recipe schema checks a
family against it without importing diffusers, and only the family a run uses is ever imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Family:
    adapter: str  # "module:Class" of the FlowPolicy adapter (its from_pretrained loads a local folder)
    lora_pipeline: str  # "diffusers:Class" whose save_lora_weights / load_lora_weights the exported LoRA is for
    transformer: str  # "diffusers:Class" of the transformer the LoRA is attached to
    video: bool = False  # latents with a time axis; accepts model.num_frames


FAMILIES: dict[str, Family] = {
    # the tiny model's transformer is an SD3Transformer2DModel, so its LoRA is exported in the SD3 format
    "tiny": Family("mogen.models.tiny:TinyT2I", "diffusers:StableDiffusion3Pipeline", "diffusers:SD3Transformer2DModel"),
    "sd3": Family("mogen.models.sd3:SD3Policy", "diffusers:StableDiffusion3Pipeline", "diffusers:SD3Transformer2DModel"),
    "flux": Family("mogen.models.flux:FluxPolicy", "diffusers:FluxPipeline", "diffusers:FluxTransformer2DModel"),
    # FLUX.2 dev and klein share Flux2LoraLoaderMixin
    "flux2": Family("mogen.models.flux2:Flux2Policy", "diffusers:Flux2Pipeline", "diffusers:Flux2Transformer2DModel"),
    "qwenimage": Family(
        "mogen.models.qwenimage:QwenImagePolicy", "diffusers:QwenImagePipeline", "diffusers:QwenImageTransformer2DModel"
    ),
    "zimage": Family("mogen.models.zimage:ZImagePolicy", "diffusers:ZImagePipeline", "diffusers:ZImageTransformer2DModel"),
    "wan": Family("mogen.models.wan:WanPolicy", "diffusers:WanPipeline", "diffusers:WanTransformer3DModel", video=True),
}


def resolve(name: str) -> type:
    """The class named "module:Class" (only names written in FAMILIES above are ever resolved)."""
    module, attribute = name.split(":")
    return getattr(import_module(module), attribute)
