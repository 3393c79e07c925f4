"""The scorer contract: images in [0,1] and prompts in, a `ScoreResult` out.

Every scorer, built-in or third-party, subclasses `Scorer` and implements `score()`. The base
class owns what the trainer relies on and no scorer should re-implement: input checks, chunking
into `batch_size` pieces, float32 scores of shape (B,) on the images' device, and turning
non-finite scores or an exception on part of a batch into a `failed` mask instead of a crash.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from reward_zoo.errors import ScorerConfigError, ScorerError


@dataclass
class ScoreResult:
    """What a scorer returns for a batch of B images.

    scores:  float32 (B,), on the images' device; NaN where `failed`.
    failed:  bool (B,); True where the scorer could not score the sample (non-finite value or an
             exception). The trainer drops the groups containing failed samples with a warning.
    details: per-sample float tensors (B,) for logging (e.g. an attribute score, a sub-metric).
    texts:   per-sample strings for logging (e.g. the text OCR recognised), each a list of length B.
    errors:  sample index -> why it failed, for the failed samples that have a reason.
    """

    scores: torch.Tensor
    failed: torch.Tensor | None = None  # a scorer may leave it None; the returned result always has it
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.scores.shape[0]


class Scorer:
    """Base class of every reward. Subclasses set the class attributes and implement `score()`.

    `score(images, prompts, metadata)` gets a validated chunk and returns either a tensor (B,) or a
    `ScoreResult`; it may return NaN for samples it cannot score. Model-backed scorers return their
    torch modules from `modules()` so that `to(device, dtype)` moves them, and read `self.device`
    / `self.dtype` when they build inputs.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    def __init__(self, batch_size: int | None = None):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ScorerConfigError(f"reward '{self.name}': batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    # --- what subclasses implement -------------------------------------------------------------
    def score(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> torch.Tensor | ScoreResult:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules to move in `to()`; empty for scorers without a model."""
        return []

    @classmethod
    def weights_status(cls, **kwargs: Any) -> tuple[bool, str]:
        """(present, where) for the weights the scorer would load with these kwargs; no loading."""
        return True, "no weights needed"

    # --- the contract the trainer uses ---------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Scorer:
        """Move the scorer's models (if any) to the trainer's device and dtype; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        for module in self.modules():
            module.to(device=self.device, dtype=self.dtype)
        return self

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        prompts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> ScoreResult:
        images, prompts, metadata = self._check_inputs(images, prompts, metadata)
        size = self.batch_size or len(images)
        parts = [
            self._score_robust(images[i : i + size], prompts[i : i + size], metadata[i : i + size])
            for i in range(0, len(images), size)
        ]
        return parts[0] if len(parts) == 1 else _concat(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"

    # --- internals -----------------------------------------------------------------------------
    def _check_inputs(self, images, prompts, metadata):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ScorerConfigError(f"reward '{self.name}': images must be a float tensor (B,3,H,W), got {shape}")
        if not images.is_floating_point():
            raise ScorerConfigError(
                f"reward '{self.name}': images must be floats in [0,1], got dtype {images.dtype} "
                "(divide uint8 images by 255)"
            )
        n = images.shape[0]
        prompts = [""] * n if prompts is None else list(prompts)
        metadata = [{} for _ in range(n)] if metadata is None else [dict(m or {}) for m in metadata]
        if len(prompts) != n or len(metadata) != n:
            raise ScorerConfigError(
                f"reward '{self.name}': got {n} images, {len(prompts)} prompts and {len(metadata)} metadata entries"
            )
        return images, prompts, metadata

    def _score_robust(self, images, prompts, metadata) -> ScoreResult:
        """Score one chunk; if it raises, score sample by sample so that one bad sample fails alone."""
        try:
            return self._finalize(self.score(images, prompts, metadata), images)
        except Exception as batch_error:  # noqa: BLE001 - the per-sample retry decides what is fatal
            if len(images) == 1:
                raise ScorerError(f"reward '{self.name}' failed: {batch_error}") from batch_error
            warnings.warn(f"reward '{self.name}' raised on a batch ({batch_error}); retrying sample by sample")
        parts, first_error = [], None
        for i in range(len(images)):
            try:
                one = images[i : i + 1]
                parts.append(self._finalize(self.score(one, prompts[i : i + 1], metadata[i : i + 1]), one))
            except Exception as error:  # noqa: BLE001
                first_error = first_error or error
                nan = torch.full((1,), float("nan"), device=images.device)
                failed = torch.ones(1, dtype=torch.bool, device=images.device)
                parts.append(ScoreResult(nan, failed, errors={0: repr(error)}))
        if all(bool(p.failed.all()) for p in parts) and first_error is not None:
            raise ScorerError(f"reward '{self.name}' failed on every sample: {first_error}") from first_error
        return _concat(parts)

    def _finalize(self, out: torch.Tensor | ScoreResult, images: torch.Tensor) -> ScoreResult:
        result = out if isinstance(out, ScoreResult) else ScoreResult(out)
        n, device = images.shape[0], images.device
        scores = result.scores.detach().to(device=device, dtype=torch.float32).reshape(-1)
        if scores.shape[0] != n:
            raise ScorerError(f"reward '{self.name}' returned {scores.shape[0]} scores for {n} images")
        failed = ~torch.isfinite(scores)
        if result.failed is not None and result.failed.numel():
            failed |= result.failed.to(device=device, dtype=torch.bool).reshape(-1)
        details = {k: v.detach().to(device=device, dtype=torch.float32).reshape(-1) for k, v in result.details.items()}
        errors = dict(result.errors)
        for i in torch.nonzero(failed).flatten().tolist():
            errors.setdefault(i, "non-finite score")
        return ScoreResult(torch.where(failed, float("nan"), scores), failed, details, dict(result.texts), errors)


def _concat(parts: list[ScoreResult]) -> ScoreResult:
    """Join chunk results in order, shifting error indices by each chunk's offset.

    A key missing from some chunk (e.g. a sample that failed alone) is filled with NaN / "" there.
    """
    errors, offset = {}, 0
    for p in parts:
        errors.update({k + offset: v for k, v in p.errors.items()})
        offset += len(p)
    detail_keys = dict.fromkeys(k for p in parts for k in p.details)
    text_keys = dict.fromkeys(k for p in parts for k in p.texts)
    return ScoreResult(
        scores=torch.cat([p.scores for p in parts]),
        failed=torch.cat([p.failed for p in parts]),
        details={
            k: torch.cat([p.details.get(k, torch.full_like(p.scores, float("nan"))) for p in parts]) for k in detail_keys
        },
        texts={k: [s for p in parts for s in p.texts.get(k, [""] * len(p))] for k in text_keys},
        errors=errors,
    )


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) floats in [0,1] on any device -> (B,H,W,3) uint8 numpy, for libraries that need host pixels."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B,3,H,W) floats in [0,1] -> RGB PIL images; only for models and encoders that require PIL."""
    return [Image.fromarray(a) for a in to_uint8_hwc(images)]
