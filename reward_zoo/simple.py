"""Model-free scorers: JPEG (in)compressibility (DDPO's objectives) and a cheap vividness score."""

from __future__ import annotations

import io
from typing import Any

import torch

from reward_zoo.base import Scorer, ScorerConfigError, ScoreResult, to_pil


def jpeg_kilobytes(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Size in kB (1000 bytes) of each image saved as a PIL/libjpeg JPEG at `quality`, as float32 (B,).

    Encoded on the host with PIL on purpose: sizes then do not depend on the device's encoder.
    """
    sizes = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class Compressibility(Scorer):
    """score = -(JPEG size in kB): higher is better, so the trainer pushes towards small files."""

    name = "compressibility"
    description = "JPEG compressibility: -kB at a fixed quality (DDPO)"

    def __init__(self, quality: int = 95, batch_size: int | None = None):
        super().__init__(batch_size)
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ScorerConfigError(f"reward '{self.name}': quality must be an int in [1, 100], got {quality!r}")
        self.quality = quality

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        kilobytes = jpeg_kilobytes(images, self.quality)
        return ScoreResult(-kilobytes, details={"jpeg_kb": kilobytes})


class Incompressibility(Compressibility):
    """score = +(JPEG size in kB): higher is better, so the trainer pushes towards detailed images."""

    name = "incompressibility"
    description = "JPEG incompressibility: +kB at a fixed quality (DDPO)"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        kilobytes = jpeg_kilobytes(images, self.quality)
        return ScoreResult(kilobytes, details={"jpeg_kb": kilobytes})


class Vivid(Scorer):
    """Mean HSV saturation and RMS contrast, both in [0,1], averaged: score in [0,1], computed on device.

    saturation = mean over pixels of (max_c - min_c) / max_c   (0 for black pixels)
    contrast   = 2 * std(luma), luma = 0.299 R + 0.587 G + 0.114 B   (std of [0,1] values is <= 0.5)
    score      = (1 - w) * saturation + w * contrast,  w = `contrast_weight`
    """

    name = "vivid"
    description = "vividness: HSV saturation and luma RMS contrast, in [0,1]"

    def __init__(self, contrast_weight: float = 0.5, batch_size: int | None = None):
        super().__init__(batch_size)
        if not isinstance(contrast_weight, (int, float)) or not 0.0 <= contrast_weight <= 1.0:
            raise ScorerConfigError(
                f"reward '{self.name}': contrast_weight must be a number in [0, 1], got {contrast_weight!r}"
            )
        self.contrast_weight = float(contrast_weight)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        x = images.float().clamp(0, 1)
        high, low = x.amax(dim=1), x.amin(dim=1)
        saturation = torch.where(high > 0, (high - low) / high.clamp_min(1e-8), torch.zeros_like(high)).mean(dim=(1, 2))
        luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        contrast = 2.0 * luma.flatten(1).std(dim=1, unbiased=False)
        scores = (1.0 - self.contrast_weight) * saturation + self.contrast_weight * contrast
        details = {"saturation": saturation, "contrast": contrast}
        return ScoreResult(scores, details=details)
