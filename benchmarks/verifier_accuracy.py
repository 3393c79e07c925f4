"""Toy-world verifier accuracy and speed, and generation throughput; writes JSON.

    python -m benchmarks.verifier_accuracy --out benchmarks/results/toyworld_verifier.json

Accuracy = mean score of each applicable attribute on ground-truth renders (1.0 is perfect), per
split and task, plus the same under Gaussian blur / pixel noise, a stand-in for imperfect model
outputs. Timings are wall-clock on one thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from mogen.toyworld import ATTRIBUTES, render_batch, sample_batch, sample_scenes, verify


def _means(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: round(float(np.nanmean(v.numpy())), 4) for k, v in result.items() if not torch.isnan(v).all()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/toyworld_verifier.json"))
    parser.add_argument("--objects", type=int, default=500, help="object scenes per split and task")
    parser.add_argument("--letters", type=int, default=100, help="text scenes per split")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    report: dict = {"size": args.size, "seed": args.seed, "machine": platform.processor() or platform.machine()}

    accuracy, timing = {}, {}
    for split in ("train", "heldout"):
        for task in ("count", "position", "text"):
            n = args.letters if task == "text" else args.objects
            scenes = sample_scenes(n, rng, split=split, tasks=(task,), size=args.size)
            images, prompts = render_batch(scenes), [s.prompt for s in scenes]
            start = time.perf_counter()
            result = verify(images, prompts)
            timing[f"{split}/{task}"] = round(1e3 * (time.perf_counter() - start) / n, 3)
            accuracy[f"{split}/{task}"] = {"n": n, **_means(result)}
    report["ground_truth_accuracy"] = accuracy
    report["verify_ms_per_image"] = timing

    scenes = sample_scenes(args.objects, rng, tasks=("count", "position"), size=args.size)
    images, prompts = render_batch(scenes), [s.prompt for s in scenes]
    generator = torch.Generator().manual_seed(args.seed)
    robustness = {}
    for sigma, noise in [(0.8, 0.0), (1.0, 0.0), (0.8, 0.05), (0.0, 0.1)]:
        degraded = gaussian_blur(images, 5, sigma) if sigma > 0 else images
        degraded = (degraded + noise * torch.randn(degraded.shape, generator=generator)).clamp(0, 1)
        result = _means(verify(degraded, prompts))
        robustness[f"blur_sigma={sigma},noise_std={noise}"] = {k: result[k] for k in (*ATTRIBUTES[:4], "all_correct")}
    report["degraded_accuracy_objects"] = robustness

    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 5.0:
        sample_batch(256, rng, size=args.size)
        count += 256
    report["generation_images_per_s"] = round(count / (time.perf_counter() - start), 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
