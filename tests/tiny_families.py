"""Tiny random-weight pipelines of the 2026 families (Z-Image, FLUX.2 dev and klein, Qwen-Image, Wan 2.1), built offline from configs, for tests.

Every component is the real diffusers/transformers class with a small config. The Qwen-style chat tokenizer is a
byte-level BPE without merges made with the `tokenizers` library, with the ChatML special tokens and a chat
template, so the pipelines' own prompt templating runs unchanged. `save_*_pipeline(folder)` writes a folder that
`from_pretrained` loads, the way a user's download is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    WanPipeline,
    WanTransformer3DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessor,
    PixtralProcessor,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    UMT5Config,
    UMT5EncoderModel,
)

from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS, T5_HIDDEN, _vae, build_t5_tokenizer

QWEN_HIDDEN = 32
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"]
# ChatML as Qwen's templates write it; enable_thinking=True adds nothing (Qwen3's template only acts on False)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Mistral's instruction format over content lists ([{"type": "text", "text": ...}]), as FLUX.2-dev's prompts come
MISTRAL_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %}[/SYSTEM_PROMPT]{% else %}[INST]{% for c in m['content'] %}{{ c['text'] }}{% endfor %}[/INST]{% endif %}"
    "{% endfor %}"
)
MISTRAL_SPECIAL_TOKENS = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def _byte_level_bpe() -> Tokenizer:
    """Byte-level BPE over the 256 byte symbols, without merges: every byte of the text is one token."""
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def build_chat_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A Qwen-like tokenizer: byte-level BPE plus the ChatML tokens and template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(), pad_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE,
        additional_special_tokens=CHAT_SPECIAL_TOKENS[1:], padding_side="right",
    )
    tokenizer.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def build_mistral_processor(folder: Path) -> PixtralProcessor:
    """A Mistral-3-like processor (Pixtral image processor + byte-level tokenizer with Mistral's special tokens)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=MISTRAL_SPECIAL_TOKENS, chat_template=MISTRAL_TEMPLATE,
    )
    processor = PixtralProcessor(PixtralImageProcessor(patch_size=4), tokenizer, patch_size=4, chat_template=MISTRAL_TEMPLATE)
    processor.save_pretrained(folder)
    return PixtralProcessor.from_pretrained(folder)


def _qwen3_config(tokenizer, hidden: int, layers: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
    )


def _qwen3(tokenizer) -> Qwen3Model:
    return Qwen3Model(_qwen3_config(tokenizer, QWEN_HIDDEN, 2))


def build_zimage_pipeline(work_dir: Path, seed: int = 0) -> ZImagePipeline:
    """Z-Image layout: a Qwen3 encoder (its second-to-last hidden state), a single-stream DiT on 2x2 patches."""
    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer(work_dir / "chat_tokenizer")
    transformer = ZImageTransformer2DModel(
        in_channels=LATENT_CHANNELS, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
        cap_feat_dim=QWEN_HIDDEN, axes_dims=[4, 6, 6], axes_lens=[256, 32, 32],
    )
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # Z-Image-Turbo's: a fixed shift of 3
        vae=_vae(), text_encoder=_qwen3(tokenizer), tokenizer=tokenizer, transformer=transformer,
    )


def save_zimage_pipeline(folder: Path, seed: int = 0) -> Path:
    build_zimage_pipeline(folder.parent / f"{folder.name}-tokenizers", seed).save_pretrained(folder)
    return folder


FLUX2_TEXT_HIDDEN = 8  # the pipelines concatenate three hidden states per token: 3 x 8 = the transformer's text width
FLUX2_TEXT_LAYERS = 27  # klein reads hidden states 9, 18 and 27, so the encoder needs 27 layers (narrow ones)


def _flux2_vae() -> AutoencoderKLFlux2:
    """FLUX.2's VAE layout, tiny; its batch-norm statistics (which normalize the patch latents) made non-trivial."""
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=LATENT_CHANNELS, norm_num_groups=8, mid_block_add_attention=False,
        sample_size=IMAGE_SIZE,
    )
    vae.bn.running_mean.copy_(torch.randn(vae.bn.num_features) * 0.3)
    vae.bn.running_var.copy_(torch.rand(vae.bn.num_features) + 0.5)
    return vae


def _flux2_transformer(guidance_embeds: bool) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * FLUX2_TEXT_HIDDEN, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _mistral3(processor: PixtralProcessor) -> Mistral3ForConditionalGeneration:
    """Mistral-3 with a tiny Pixtral vision tower (unused for text) and 30 narrow layers (dev reads 10, 20 and 30)."""
    tokenizer = processor.tokenizer
    text = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=FLUX2_TEXT_HIDDEN, intermediate_size=16, num_hidden_layers=30,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4, pad_token_id=tokenizer.pad_token_id,
    )
    vision = PixtralVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                                 patch_size=4, head_dim=4)
    config = Mistral3Config(text_config=text, vision_config=vision, image_token_index=processor.image_token_id, spatial_merge_size=1)
    return Mistral3ForConditionalGeneration(config)


def build_flux2_pipeline(work_dir: Path, seed: int = 0) -> Flux2Pipeline:
    """FLUX.2-dev layout: a Mistral-3 text encoder, the guidance embedding (guidance-distilled, no CFG pass)."""
    torch.manual_seed(seed)
    processor = build_mistral_processor(work_dir / "mistral_processor")
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),  # mu comes from the pipeline
        vae=_flux2_vae(), text_encoder=_mistral3(processor), tokenizer=processor,
        transformer=_flux2_transformer(guidance_embeds=True),
    )


def save_flux2_pipeline(folder: Path, seed: int = 0) -> Path:
    build_flux2_pipeline(folder.parent / f"{folder.name}-tokenizers", seed).save_pretrained(folder)
    return folder


def build_flux2_klein_pipeline(work_dir: Path, seed: int = 0, is_distilled: bool = False) -> Flux2KleinPipeline:
    """FLUX.2 klein layout: a Qwen3 causal LM as text encoder, no guidance embedding; base (CFG) or step-distilled."""
    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer(work_dir / "chat_tokenizer")
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),  # mu comes from the pipeline
        vae=_flux2_vae(), text_encoder=Qwen3ForCausalLM(_qwen3_config(tokenizer, FLUX2_TEXT_HIDDEN, FLUX2_TEXT_LAYERS)),
        tokenizer=tokenizer, transformer=_flux2_transformer(guidance_embeds=False), is_distilled=is_distilled,
    )


def save_flux2_klein_pipeline(folder: Path, seed: int = 0, is_distilled: bool = False) -> Path:
    build_flux2_klein_pipeline(folder.parent / f"{folder.name}-tokenizers", seed, is_distilled).save_pretrained(folder)
    return folder


def _qwen25_vl(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL with a one-block vision tower (unused for text) and a 2-layer language model."""
    text = dict(
        vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=QWEN_HIDDEN, patch_size=4,
                  spatial_merge_size=1, temporal_patch_size=1, window_size=8, fullatt_block_indexes=[0])
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(f"<|{token}|>")
           for name, token in [("vision_start_token", "vision_start"), ("image_token", "image_pad"), ("video_token", "video_pad")]}
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))


def build_qwenimage_pipeline(work_dir: Path, seed: int = 0) -> QwenImagePipeline:
    """Qwen-Image layout: a Qwen2.5-VL encoder, the Wan-style causal 3D VAE on one-frame latents, an MMDiT."""
    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer(work_dir / "chat_tokenizer")
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2],
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=QWEN_HIDDEN, axes_dims_rope=(4, 6, 6),
    )
    # Qwen-Image's dynamic shift (0.5 at 256 tokens to 0.9 at 8192); its shift_terminal is left out (see mogen.models.qwenimage)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
    )
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=_qwen25_vl(tokenizer), tokenizer=tokenizer, transformer=transformer)


def save_qwenimage_pipeline(folder: Path, seed: int = 0) -> Path:
    build_qwenimage_pipeline(folder.parent / f"{folder.name}-tokenizers", seed).save_pretrained(folder)
    return folder


VIDEO_FRAMES = 5  # 4 k + 1 for a VAE with temporal factor 4: 2 latent frames


def build_wan_pipeline(work_dir: Path, seed: int = 0) -> WanPipeline:
    """Wan 2.1 text-to-video layout: a UMT5 encoder, the causal 3D VAE (4x in time), a 3D DiT on (1, 2, 2) patches.

    The scheduler is the flow-matching Euler one with Wan's 480p flow shift (3.0); released folders ship UniPC."""
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(work_dir / "t5_tokenizer")
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=T5_HIDDEN, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2], scale_factor_temporal=4, scale_factor_spatial=4,
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=T5_HIDDEN, freq_dim=32, ffn_dim=48, num_layers=1, rope_max_seq_len=64,
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def save_wan_pipeline(folder: Path, seed: int = 0) -> Path:
    build_wan_pipeline(folder.parent / f"{folder.name}-tokenizers", seed).save_pretrained(folder)
    return folder
