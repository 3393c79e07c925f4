"""Tiny random-weight StableDiffusion3Pipeline and FluxPipeline, built offline, for tests.

Every component is the real diffusers/transformers class with a small config; the tokenizers are built without
the hub: CLIP's from open_clip's bundled BPE merges (mogen.models.tokenizer), T5's as a small Unigram model made
with the `tokenizers` library. `save_*_pipeline(folder)` writes a folder that `from_pretrained` loads, so tests go
through the same loading path as a user's SD3.5 or FLUX.1 folder.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from mogen.models.tokenizer import build_clip_tokenizer

CLIP_MERGES = 300
CLIP_HIDDEN = 16  # SD3 concatenates two CLIP hidden states (2 x 16) and pads them to the T5 width
T5_HIDDEN = 32
LATENT_CHANNELS = 4
IMAGE_SIZE = 32  # pixels; the tiny VAE downsamples by 2, so latents are 16 x 16
T5_WORDS = "a an the of on in left right above below red green blue yellow circle circles square triangle two three".split()


def build_t5_tokenizer(folder: Path) -> T5TokenizerFast:
    """A T5-style Unigram tokenizer (pad=0, eos=1, unk=2, '</s>' appended) over characters and a few words."""
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"]
    pieces += [f"\u2581{w}" for w in T5_WORDS]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    vocab = [(p, 0.0 if i < 3 else -float(len(p) < 3) - 1.0) for i, p in enumerate(pieces)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = T5TokenizerFast(tokenizer_object=backend, extra_ids=0, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def _clip_config(tokenizer, hidden: int, projection: int = 0) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5(tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=T5_HIDDEN, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8,
        sample_size=IMAGE_SIZE, mid_block_add_attention=False, scaling_factor=1.5, shift_factor=0.1,
    )


def build_sd3_pipeline(work_dir: Path, seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 layout: CLIP-L- and CLIP-G-like encoders with projection, a T5 encoder, an MMDiT with joint attention."""
    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer(work_dir / "clip_tokenizer", num_merges=CLIP_MERGES, model_max_length=77)
    t5_tokenizer = build_t5_tokenizer(work_dir / "t5_tokenizer")
    latent_size = IMAGE_SIZE // 2
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_HIDDEN, caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_HIDDEN, pos_embed_max_size=latent_size,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3.5's
        vae=_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(clip_tokenizer, CLIP_HIDDEN)),
        tokenizer=clip_tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip_tokenizer, CLIP_HIDDEN)),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_t5(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


def build_flux_pipeline(work_dir: Path, seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX layout: a CLIP encoder (pooled output only), a T5 encoder, a dual/single-stream transformer on 2x2-packed latents."""
    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer(work_dir / "clip_tokenizer", num_merges=CLIP_MERGES, model_max_length=77)
    t5_tokenizer = build_t5_tokenizer(work_dir / "t5_tokenizer")
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_HIDDEN, pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's: the shift grows with the image's token count
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
        ),
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(clip_tokenizer, CLIP_HIDDEN)),
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5(t5_tokenizer),
        tokenizer_2=t5_tokenizer,
    )


def save_sd3_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a tiny SD3 pipeline folder (what a user's SD3.5 download looks like) and return its path."""
    build_sd3_pipeline(folder.parent / f"{folder.name}-tokenizers", seed).save_pretrained(folder)
    return folder


def save_flux_pipeline(folder: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write a tiny FLUX pipeline folder (FLUX.1-dev layout with guidance_embeds, -schnell without) and return its path."""
    build_flux_pipeline(folder.parent / f"{folder.name}-tokenizers", seed, guidance_embeds).save_pretrained(folder)
    return folder
