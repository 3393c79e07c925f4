"""Chunked rollouts and scoring that overlaps sampling (mogen.rollout's chunk_size, mogen.overlap.ChunkScoring).

The trainer-level contract (the same LoRA with and without overlap) is in tests/test_trainer.py; here: a sample's
noise does not depend on the chunking or the data-parallel shard, and the background worker's errors surface on
the calling thread and the worker is joined on every path.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import pytest
import torch

from mogen.models.tiny import TinyT2I
from mogen.overlap import ChunkScoring
from mogen.rewards import Scores
from mogen.rollout import chunks_of, collect_rollout

PROMPTS = ["two red circles"] * 3 + ["a blue square"] * 3


def _rollout(policy: TinyT2I, **kwargs) -> object:
    return collect_rollout(
        policy, PROMPTS, torch.tensor([0, 0, 0, 1, 1, 1]), kind="sde", eta=0.7, num_steps=4, shift=3.0,
        trained_steps=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), **kwargs,
    )


def test_chunks_cover_the_samples_in_order() -> None:
    assert chunks_of(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert chunks_of(8, None) == [slice(0, 8)] and chunks_of(8, 8) == [slice(0, 8)] and chunks_of(2, 5) == [slice(0, 2)]


def test_a_samples_noise_does_not_depend_on_chunks_or_shard(tiny_model_dir: Path) -> None:
    """x_1 is read off the first trained step's input (step 0); the noise a stochastic step drew is
    (next_latent - mean) / std. Both must be the same per sample for any chunking and any shard; the means agree
    to float precision only (forwards over fewer samples round differently)."""
    policy = TinyT2I.from_pretrained(tiny_model_dir)
    whole = _rollout(policy)
    chunked = _rollout(policy, chunk_size=4)
    shard = _rollout(policy, shard=slice(3, 6), chunk_size=2)
    std = whole.stds.view(1, -1, 1, 1, 1)
    noise = (whole.next_latents - whole.means) / std
    for other, rows in ((chunked, slice(0, 6)), (shard, slice(3, 6))):
        assert torch.equal(other.latents[:, 0], whole.latents[rows, 0])  # x_1
        torch.testing.assert_close((other.next_latents - other.means) / std, noise[rows], rtol=0, atol=1e-5)
        torch.testing.assert_close(other.means, whole.means[rows], rtol=1e-5, atol=1e-6)
        assert torch.equal(other.stds, whole.stds)
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-5)
    assert shard.prompts == PROMPTS[3:] and shard.log_probs.shape == (3, 2)
    assert noise.std() == pytest.approx(1.0, abs=0.05)  # it is the standard normal draw, not a rounding residue


def test_on_chunk_receives_every_chunk_in_order(tiny_model_dir: Path) -> None:
    policy = TinyT2I.from_pretrained(tiny_model_dir)
    seen: list[tuple[slice, torch.Tensor]] = []
    rollout = _rollout(policy, chunk_size=4, on_chunk=lambda latents, chunk: seen.append((chunk, latents)))
    assert [chunk for chunk, _ in seen] == [slice(0, 4), slice(4, 6)] and rollout.images is None
    images = torch.cat([policy.decode(latents) for _, latents in seen])
    torch.testing.assert_close(images, _rollout(policy, chunk_size=4).images, rtol=0, atol=0)


def _brightness(images: torch.Tensor, prompts: list[str]) -> Scores:
    scores = images.float().mean(dim=(1, 2, 3))
    failed = torch.tensor(["red" in p for p in prompts])
    return Scores(["brightness"], torch.where(failed, float("nan"), scores)[None], failed)


@pytest.mark.parametrize("background", [False, True])
def test_scores_come_back_in_sample_order_with_failed_samples_kept(background: bool) -> None:
    images = torch.rand(6, 3, 4, 4)
    with ChunkScoring(lambda x: x, _brightness, PROMPTS, torch.device("cpu"), background) as scoring:
        for chunk in chunks_of(6, 4):
            scoring.submit(images[chunk], chunk)
        got_images, scores, seconds = scoring.results()
    expected = _brightness(images, PROMPTS)
    assert torch.equal(got_images, images) and torch.equal(scores.failed, expected.failed)
    assert torch.equal(scores.raw.nan_to_num(-1.0), expected.raw.nan_to_num(-1.0)) and seconds >= 0


def _scoring_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mogen-scoring")]


def test_a_scorer_bug_is_raised_on_the_calling_thread_with_its_traceback() -> None:
    def buggy(images: torch.Tensor, prompts: list[str]) -> Scores:
        if any("blue" in p for p in prompts):
            raise KeyError("no such head")
        return _brightness(images, prompts)

    images, submitted = torch.rand(6, 3, 4, 4), []
    with pytest.raises(KeyError, match="no such head") as raised:
        with ChunkScoring(lambda x: x, buggy, PROMPTS, torch.device("cpu"), background=True) as scoring:
            for chunk in chunks_of(6, 2):
                scoring.submit(images[chunk], chunk)
                submitted.append(chunk)
                time.sleep(0.5)  # sampling the next chunk (the failing chunk [2, 4) is scored meanwhile)
            scoring.results()
    assert submitted == [slice(0, 2), slice(2, 4)]  # raised at the next chunk, not after sampling the whole rollout
    assert "buggy" in "".join(traceback.format_tb(raised.tb))  # the scorer's own frame
    assert not _scoring_threads()


def test_the_worker_is_joined_when_sampling_fails() -> None:
    """A failure on the calling thread (sampling raises) waits for the chunk being scored and drops the rest."""
    started, scored = [], []

    def slow(images: torch.Tensor, prompts: list[str]) -> Scores:
        started.append(len(prompts))
        time.sleep(0.3)
        scored.append(len(prompts))
        return _brightness(images, prompts)

    images = torch.rand(6, 3, 4, 4)
    with pytest.raises(RuntimeError, match="out of memory"):
        with ChunkScoring(lambda x: x, slow, PROMPTS, torch.device("cpu"), background=True) as scoring:
            for chunk in chunks_of(6, 2):
                scoring.submit(images[chunk], chunk)
            raise RuntimeError("out of memory")
    assert not _scoring_threads()
    assert started == scored and 1 <= len(scored) < 3  # the running chunk finished, the queued ones were cancelled
