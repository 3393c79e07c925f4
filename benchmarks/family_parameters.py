"""Exact parameter counts of the 2026 families' transformers (FLUX.2, Qwen-Image, Z-Image, Wan 2.1) and of mogen's
LoRA on them, from the real diffusers classes built on the meta device (no memory, no download).

The configs are the released transformer/config.json values; for FLUX.2-dev, Qwen-Image, Z-Image and Wan2.1-14B
they are the diffusers classes' defaults. Each total is checked against the size the model card announces
(tests/test_family_parameters.py). These are the inputs a memory estimate needs; the activation model of
benchmarks/memory_estimates.py is measured for SD3/FLUX.1 blocks only.

    python -m benchmarks.family_parameters     # writes benchmarks/results/family_parameters.json, prints a table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import Flux2Transformer2DModel, QwenImageTransformer2DModel, WanTransformer3DModel, ZImageTransformer2DModel

from mogen.config import LoraConfig
from mogen.lora import attach_lora

OUT = Path(__file__).resolve().parent / "results" / "family_parameters.json"
GIB = 2**30
MODELS = {  # name -> (transformer class, released config (overrides of the class defaults), size announced)
    "flux2_dev": (Flux2Transformer2DModel, {}, 32e9),
    "flux2_klein_4b": (Flux2Transformer2DModel, dict(num_layers=5, num_single_layers=20, num_attention_heads=24,
                                                     joint_attention_dim=7680, guidance_embeds=False), 4e9),
    "qwen_image": (QwenImageTransformer2DModel, {}, 20e9),
    "z_image": (ZImageTransformer2DModel, {}, 6e9),
    "wan21_t2v_1_3b": (WanTransformer3DModel, dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), 1.3e9),
    "wan21_t2v_14b": (WanTransformer3DModel, {}, 14e9),
}


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def count(lora_rank: int = 32) -> dict[str, dict[str, float]]:
    """Per model: transformer parameters, LoRA parameters (mogen's default targets, rank `lora_rank`), bf16 GiB."""
    rows = {}
    for name, (cls, config, announced) in MODELS.items():
        with init_empty_weights(include_buffers=True):
            transformer = cls(**config)
            total = numel(transformer)
            lora = sum(p.numel() for p in attach_lora(transformer, LoraConfig(rank=lora_rank, alpha=2 * lora_rank)))
        rows[name] = {"transformer": total, "lora": lora, "weights_bf16_gib": round(2 * total / GIB, 2), "announced": announced}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    configs = {name: {"class": cls.__name__, "overrides": config} for name, (cls, config, _) in MODELS.items()}
    args.out.write_text(json.dumps({"parameters": rows, "configs": configs, "lora": "rank 32, mogen's default targets"}, indent=1) + "\n")
    print("| model | transformer | weights bf16 | LoRA r32 |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['transformer'] / 1e9:.2f}B | {row['weights_bf16_gib']:.1f} GiB | {row['lora'] / 1e6:.1f}M |")


if __name__ == "__main__":
    main()
