"""Scoring videos with image scorers: score a few frames of each video, then reduce over them.

A video is a float tensor (B, F, 3, H, W) in [0, 1]. The chosen frames of all B videos go through the image scorer
as one batch of B x K images (each with its video's prompt); the video's score is the mean or the minimum of its
K frame scores (the minimum punishes a reward that holds on some frames only). A video fails if any of its scored
frames fails; the per-frame scores are kept in `details` as `frame_<index>` for logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from reward_zoo.base import Scorer, ScorerConfigError, ScoreResult

FrameReduce = Literal["mean", "min"]


def frame_indices(num_frames: int, frames: int | Sequence[int]) -> list[int]:
    """`frames` evenly spaced indices from first to last frame (int), or the given indices (list), validated."""
    if isinstance(frames, int):
        if frames < 1:
            raise ScorerConfigError(f"frames must be >= 1, got {frames}")
        count = min(frames, num_frames)
        return torch.linspace(0, num_frames - 1, count).round().long().tolist()
    indices = list(frames)
    if not indices or any(not -num_frames <= i < num_frames for i in indices):
        raise ScorerConfigError(f"frame indices {indices} must be non-empty and within the video's {num_frames} frames")
    return [i % num_frames for i in indices]


def score_video(
    scorer: Scorer, videos: torch.Tensor, prompts: Sequence[str], frames: int | Sequence[int] = 4, reduce: FrameReduce = "mean"
) -> ScoreResult:
    """Score (B, F, 3, H, W) videos with an image scorer on the chosen frames, reduced by `reduce` per video."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ScorerConfigError(f"reward '{scorer.name}': videos must be a float tensor (B,F,3,H,W), got {tuple(videos.shape)}")
    if reduce not in ("mean", "min"):
        raise ScorerConfigError(f"frame reduce must be 'mean' or 'min', got {reduce!r}")
    b = videos.shape[0]
    indices = frame_indices(videos.shape[1], frames)
    k = len(indices)
    result = scorer(videos[:, indices].flatten(0, 1), [p for p in prompts for _ in range(k)])
    per_frame = result.scores.view(b, k)
    failed = result.failed.view(b, k).any(dim=1)
    scores = per_frame.mean(dim=1) if reduce == "mean" else per_frame.amin(dim=1)
    details = {f"frame_{i}": per_frame[:, j] for j, i in enumerate(indices)}
    if "applicable" in result.details:  # a property of the prompt, the same on every frame
        details["applicable"] = result.details["applicable"].view(b, k).amin(dim=1)
    errors = {i // k: f"frame {indices[i % k]}: {why}" for i, why in sorted(result.errors.items(), reverse=True)}
    return ScoreResult(torch.where(failed, float("nan"), scores), failed, details, errors=errors)
