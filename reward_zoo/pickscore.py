"""PickScore: a CLIP-H fine-tuned on Pick-a-Pic human preferences, published as a transformers CLIPModel.

    score = exp(logit_scale) * cos(image embedding, text embedding)      (about 18-23 for real images)

Loaded with `from_pretrained(..., local_files_only=True)` from a local directory or a hub id that is
already in the local Hugging Face cache. PickScore's repository ships the model only; its processor
(tokenizer + image preprocessing) is LAION's CLIP-ViT-H-14's, hence the separate `processor` argument.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reward_zoo.base import Scorer
from reward_zoo.clip_models import clip_pixels
from reward_zoo.weights import locate_pretrained_dir, resolve_pretrained_dir

_MODEL, _PROCESSOR = "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(Scorer):
    name = "pickscore"
    description = "PickScore human preference (transformers CLIPModel, local dir or cached hub id)"

    def __init__(self, model: str = _MODEL, processor: str = _PROCESSOR, batch_size: int | None = None):
        """model: a CLIPModel directory (or cached hub id); processor: a directory with its tokenizer and
        preprocessor_config.json (or cached hub id)."""
        super().__init__(batch_size)
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        how = "save the model with save_pretrained or fill the hub cache on a machine with internet"
        model_dir = resolve_pretrained_dir(self.name, model, "the PickScore CLIPModel", how)
        processor_dir = resolve_pretrained_dir(self.name, processor, "the PickScore processor (tokenizer)", how)
        self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(processor_dir, local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)
        self.resize = image_processor.size["shortest_edge"]
        self.crop = image_processor.crop_size["height"]
        self.mean, self.std = image_processor.image_mean, image_processor.image_std
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @classmethod
    def weights_status(cls, model: str = _MODEL, processor: str = _PROCESSOR, **_: Any) -> tuple[bool, str]:
        present = locate_pretrained_dir(model) is not None and locate_pretrained_dir(processor) is not None
        return present, f"{model} + {processor}"

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        pixels = clip_pixels(images.to(self.device), self.resize, self.mean, self.std, self.dtype, crop=self.crop)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        image_features = F.normalize(self.model.get_image_features(pixel_values=pixels).float(), dim=-1)
        text_features = F.normalize(self.model.get_text_features(**tokens).float(), dim=-1)
        return self.model.logit_scale.float().exp() * (image_features * text_features).sum(dim=-1)
