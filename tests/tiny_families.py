"""Tiny random-weight pipelines of the 2026 families (Z-Image, ...), built offline from configs, for tests.

Every component is the real diffusers/transformers class with a small config. The Qwen-style chat tokenizer is a
byte-level BPE without merges made with the `tokenizers` library, with the ChatML special tokens and a chat
template, so the pipelines' own prompt templating runs unchanged. `save_*_pipeline(folder)` writes a folder that
`from_pretrained` loads, the way a user's download is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS, _vae

QWEN_HIDDEN = 32
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML as Qwen's templates write it; enable_thinking=True adds nothing (Qwen3's template only acts on False)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A Qwen-like tokenizer: byte-level BPE over the 256 byte symbols (no merges) plus the ChatML tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE,
        additional_special_tokens=CHAT_SPECIAL_TOKENS[1:], padding_side="right",
    )
    tokenizer.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def _qwen3(tokenizer) -> Qwen3Model:
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=QWEN_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3Model(config)


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
