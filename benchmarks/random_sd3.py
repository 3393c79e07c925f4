"""Random-weight StableDiffusion3Pipeline folders of a chosen size, for the benchmarks that time SD3 (no weights here).

Every component is the real diffusers/transformers class; the folder is written with `save_pretrained`, so mogen
loads it through `model: {family: sd3, name: <folder>}` like a user's SD3.5 download. The transformer and the VAE
are built at the size asked for; the text encoders are small (random weights encode nothing anyway) but give the
transformer the real widths: T5 states of `joint_attention_dim` and two CLIP projections summing to
`pooled_projection_dim`. Tokenizers are built offline: CLIP's by mogen, T5's by tests/tiny_pipelines.py.

Not a benchmark itself: throughput.py and gpu_smoke.py import it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from benchmarks.memory_estimates import SD35_MEDIUM, VAE_16CH, numel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from mogen.models.tokenizer import build_clip_tokenizer

TINY_PIPELINES = Path(__file__).resolve().parents[1] / "tests" / "tiny_pipelines.py"
CLIP_HIDDEN = 16  # per CLIP encoder; SD3 concatenates both penultimate states and zero-pads them to the T5 width


def _small_vae(latent_channels: int) -> dict:
    """A two-level VAE (images = 2 x latents) with `latent_channels`: cheap to decode, latents shaped like SD3.5's."""
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                block_out_channels=[8, 16], layers_per_block=1, latent_channels=latent_channels, norm_num_groups=8,
                mid_block_add_attention=False, scaling_factor=1.5305, shift_factor=0.0609)


@dataclass(frozen=True)
class SD3Size:
    """What to build: SD3Transformer2DModel kwargs, AutoencoderKL kwargs, and the two CLIP projection widths."""

    name: str
    transformer: dict
    vae: dict
    clip_projections: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        """Default image side in pixels: latent side x the VAE's downsampling (2 per level after the first)."""
        return self.transformer["sample_size"] * 2 ** (len(self.vae["block_out_channels"]) - 1)


# SD3.5-Medium's transformer and VAE as published (benchmarks/memory_estimates.py); CLIP-L 768 + CLIP-G 1280 pooled.
SD35_MEDIUM_SIZE = SD3Size("sd35_medium", SD35_MEDIUM, {**VAE_16CH, "scaling_factor": 1.5305, "shift_factor": 0.0609}, (768, 1280))
# A mid-size SD3 transformer for CPU timing: 12 blocks of hidden 768 (12 heads x 64) on 32 x 32 x 16 latents.
MID = SD3Size(
    "mid_sd3_12x768",
    dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=12, attention_head_dim=64,
         num_attention_heads=12, joint_attention_dim=64, caption_projection_dim=768, pooled_projection_dim=64,
         pos_embed_max_size=32, qk_norm="rms_norm"),
    _small_vae(16), (32, 32),
)
# SD3.5-Medium's block structure (qk RMS norm, a dual-attention block, a last context_pre_only block) at toy width.
TOY = SD3Size(
    "toy_sd35_structure",
    dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=8,
         num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
         pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0,)),
    _small_vae(16), (16, 16),
)


def _t5_tokenizer(folder: Path):
    """tests/tiny_pipelines.py's offline T5 tokenizer (loaded by path: tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tiny_pipelines", TINY_PIPELINES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_t5_tokenizer(folder)


def _clip(tokenizer, projection: int) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_HIDDEN, intermediate_size=2 * CLIP_HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def save_random_sd3(size: SD3Size, folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                    device: str = "cpu") -> dict[str, int]:
    """Write a random-weight SD3 pipeline of `size` to `folder` in `dtype`, built on `device` (initialising a
    2.5B-parameter transformer on a GPU takes seconds, on a CPU minutes); returns each component's parameters + buffers."""
    if sum(size.clip_projections) != size.transformer["pooled_projection_dim"]:
        raise ValueError(f"{size.name}: CLIP projections {size.clip_projections} must sum to pooled_projection_dim")
    torch.manual_seed(seed)
    work = folder.parent / f"{folder.name}-tokenizers"
    clip_tokenizer = build_clip_tokenizer(work / "clip", num_merges=300, model_max_length=77)
    t5_tokenizer = _t5_tokenizer(work / "t5")
    with torch.device(device):
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tokenizer), d_model=size.transformer["joint_attention_dim"], d_kv=8, d_ff=64, num_layers=1,
            num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ))
        pipeline = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**size.transformer),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(**size.vae),
            text_encoder=_clip(clip_tokenizer, size.clip_projections[0]),
            tokenizer=clip_tokenizer,
            text_encoder_2=_clip(clip_tokenizer, size.clip_projections[1]),
            tokenizer_2=clip_tokenizer,
            text_encoder_3=t5,
            tokenizer_3=t5_tokenizer,
        )
    if dtype != torch.float32:
        pipeline.to(dtype=dtype)
    pipeline.save_pretrained(folder)
    encoders = (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3)
    return {"transformer": numel(pipeline.transformer), "text_encoders": sum(numel(e) for e in encoders), "vae": numel(pipeline.vae)}
