"""ImageReward (BLIP ViT-L + BERT cross-attention + MLP), built with the `image-reward` package offline.

    score = (MLP(BERT([CLS] prompt | cross-attends to ViT(image))) - 0.167) / 1.033   (the package's normalization)

`ImageReward.load()` would download the checkpoint, med_config.json and (inside BLIP's `init_tokenizer`)
the `bert-base-uncased` tokenizer. We build the package's own `ImageReward` module instead, with a local
med_config and a local BERT tokenizer, load a local checkpoint with `torch.load(weights_only=True)`, and
score whole batches through its batched `score_gard` path (the package's `score()` takes one PIL image).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from reward_zoo.base import Scorer, ScorerConfigError
from reward_zoo.clip_models import clip_pixels
from reward_zoo.weights import HF_PREFIX, locate_file, locate_pretrained_dir, resolve_file, resolve_pretrained_dir

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CHECKPOINT = f"{HF_PREFIX}THUDM/ImageReward/ImageReward.pt"
_MED_CONFIG = f"{HF_PREFIX}THUDM/ImageReward/med_config.json"
_TOKENIZER = "google-bert/bert-base-uncased"


@contextmanager
def _local_bert_tokenizer(tokenizer_dir: str):
    """Make BLIP's `init_tokenizer` read `tokenizer_dir` instead of fetching bert-base-uncased from the hub.

    BLIP hard-codes the hub id in `init_tokenizer()`, called from BLIP_Pretrain.__init__; we swap the name
    that blip_pretrain imported for the duration of the construction, adding the same two special tokens.
    """
    from ImageReward.models.BLIP import blip_pretrain
    from transformers import BertTokenizer

    def init_tokenizer():
        tokenizer = BertTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    original = blip_pretrain.init_tokenizer
    blip_pretrain.init_tokenizer = init_tokenizer
    try:
        yield
    finally:
        blip_pretrain.init_tokenizer = original


@contextmanager
def _skip_weight_init():
    """Skip random initialization while the package builds its ~470M-parameter model (5 s -> 0.1 s on CPU).

    Every weight the score uses is overwritten by the checkpoint right after (checked on load); this is
    the trick transformers' `no_init_weights` uses. torch.nn.init's functions and the timm trunc_normal_
    that BLIP's ViT imported are swapped for no-ops, and restored on exit.
    """
    from ImageReward.models.BLIP import vit

    def skip(tensor, *args, **kwargs):
        return tensor

    targets = [(torch.nn.init, name) for name in _INIT_FUNCTIONS] + [(vit, "trunc_normal_")]
    originals = [getattr(owner, name) for owner, name in targets]
    for owner, name in targets:
        setattr(owner, name, skip)
    try:
        yield
    finally:
        for (owner, name), original in zip(targets, originals):
            setattr(owner, name, original)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "kaiming_uniform_",
                   "kaiming_normal_", "xavier_uniform_", "xavier_normal_")


class ImageRewardScorer(Scorer):
    name = "imagereward"
    description = "ImageReward human preference (image-reward package, local checkpoint + tokenizer)"

    def __init__(
        self,
        checkpoint: str = _CHECKPOINT,
        med_config: str = _MED_CONFIG,
        tokenizer: str = _TOKENIZER,
        batch_size: int | None = None,
    ):
        """checkpoint: ImageReward.pt; med_config: its med_config.json; tokenizer: a BERT tokenizer
        directory (or cached hub id) with vocab.txt. Each is a path or an hf:// spec / hub id in the local cache."""
        super().__init__(batch_size)
        how = "download ImageReward.pt and med_config.json from the THUDM/ImageReward hub repository and pass their paths"
        checkpoint_path = resolve_file(self.name, checkpoint, "the ImageReward checkpoint", how)
        med_config_path = resolve_file(self.name, med_config, "ImageReward's med_config.json", how)
        tokenizer_dir = resolve_pretrained_dir(
            self.name, tokenizer, "the BERT tokenizer", "save bert-base-uncased's tokenizer (vocab.txt) to a directory"
        )
        try:
            from ImageReward.ImageReward import ImageReward
        except ImportError as error:
            raise ScorerConfigError(
                f"reward 'imagereward' needs the image-reward package: pip install --no-deps image-reward==1.5 ({error})"
            ) from error

        with _local_bert_tokenizer(tokenizer_dir), _skip_weight_init():
            self.model = ImageReward(med_config=med_config_path, device="cpu")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        missing, _ = self.model.load_state_dict(state, strict=False)
        # The checkpoint may omit BLIP parts the score never uses (projections); it must cover the rest,
        # which construction left uninitialized.
        used = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")
        missing_used = [k for k in missing if k.startswith(used)]
        if missing_used:
            raise ScorerConfigError(
                f"reward 'imagereward': {checkpoint_path} lacks {len(missing_used)} weights the score needs, "
                f"e.g. {missing_used[:3]}; is it an ImageReward checkpoint matching med_config {med_config_path}?"
            )
        self.model.eval().requires_grad_(False)

    @classmethod
    def weights_status(
        cls, checkpoint: str = _CHECKPOINT, med_config: str = _MED_CONFIG, tokenizer: str = _TOKENIZER, **_: Any
    ) -> tuple[bool, str]:
        present = all(locate_file(f) for f in (checkpoint, med_config)) and locate_pretrained_dir(tokenizer) is not None
        return present, f"{checkpoint} + {med_config} + {tokenizer}"

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ImageRewardScorer:
        super().to(device, dtype)
        self.model.device = self.device  # score_gard builds its attention mask on model.device
        return self

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        pixels = clip_pixels(images.to(self.device), 224, _CLIP_MEAN, _CLIP_STD, self.dtype)
        tokens = self.model.blip.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
        ).to(self.device)
        rewards = self.model.score_gard(tokens.input_ids, tokens.attention_mask, pixels)
        return rewards.float().squeeze(-1)
