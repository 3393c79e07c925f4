"""Scoring that overlaps sampling: each chunk of a rollout is decoded and scored while the next chunk samples.

With a slow scorer (tesseract OCR at a few images/s, a remote scorer or a VLM judge over HTTP) scoring after the
whole rollout leaves the sampler idle. `ChunkScoring` takes each chunk's final latents as soon as the rollout has
sampled them (mogen.rollout.collect_rollout's `on_chunk`) and decodes and scores them on one background thread.
That pays wherever the scorer releases the GIL: torch ops, a tesseract subprocess, an HTTP request.

    step time = sampling + max(0, scoring - what of it hid behind sampling) + update

Scores come back in sample order whatever the chunking, and the sampling noise does not depend on it either, so the
LoRA is the same with and without overlap. Without `background` the chunks are decoded and scored after sampling,
on the calling thread: the rollout as it always was.

A scorer's failed samples stay failed samples (their `failed` mask); an exception raised on the worker (a bug) is
raised again on the calling thread, with its traceback, at the next chunk or when the scores are collected. The
worker is joined when the `with` block exits, on every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from mogen.rewards import Scores

Decode = Callable[[torch.Tensor], torch.Tensor]  # final latents -> images in [0, 1]; sets its own grad/autocast mode
Score = Callable[[torch.Tensor, list[str]], Scores]  # images, prompts -> raw scores (mogen.rewards.Objectives.score)


@dataclass
class ChunkResult:
    images: torch.Tensor
    scores: Scores
    seconds: float  # decoding + scoring, on whichever thread ran it


class ChunkScoring:
    """Decodes and scores rollout chunks on one background thread (or after sampling); use as a context manager."""

    def __init__(self, decode: Decode, score: Score, prompts: list[str], device: torch.device, background: bool):
        self.decode, self.score, self.prompts, self.device = decode, score, prompts, device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mogen-scoring") if background else None
        self._jobs: list[Future[ChunkResult] | Callable[[], ChunkResult]] = []

    def _run(self, latents: torch.Tensor, chunk: slice) -> ChunkResult:
        started = time.perf_counter()
        # A new thread starts on CUDA device 0 with grad enabled: take the caller's device (no_grad is decode's).
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            images = self.decode(latents)
            scores = self.score(images, self.prompts[chunk])
        return ChunkResult(images, scores, time.perf_counter() - started)

    def submit(self, latents: torch.Tensor, chunk: slice) -> None:
        """Queue one chunk's final latents (`chunk`: its slice of `prompts`); raises a finished chunk's exception."""
        for job in self._jobs:
            if isinstance(job, Future) and job.done():
                job.result()  # re-raises the worker's exception here rather than after sampling the whole rollout
        job = partial(self._run, latents, chunk)
        self._jobs.append(job if self._pool is None else self._pool.submit(job))

    def results(self) -> tuple[torch.Tensor, Scores, float]:
        """Every chunk's images and scores concatenated in sample order, and the decode + score seconds summed."""
        parts = [job.result() if isinstance(job, Future) else job() for job in self._jobs]
        first = parts[0].scores
        scores = Scores(first.keys, torch.cat([p.scores.raw for p in parts], dim=1), torch.cat([p.scores.failed for p in parts]))
        return torch.cat([p.images for p in parts]), scores, sum(p.seconds for p in parts)

    def __enter__(self) -> ChunkScoring:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:  # on an exception: drop the chunks not started, wait for the one running
            self._pool.shutdown(wait=True, cancel_futures=True)
