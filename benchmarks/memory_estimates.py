"""GPU memory ESTIMATES for aligning SD3.5-Medium, SD3.5-Large and FLUX.1-dev with mogen (LoRA r32, AdamW).

Nothing here runs on a GPU (this machine has none). Every number comes from three sources, recorded in the JSON:

1. Parameter counts, exact: the real diffusers/transformers classes are built on the meta device (no memory,
   no download) from the published configs below, and a real peft LoRA (mogen.lora.attach_lora, the reference
   target modules) is attached to the meta transformer and counted.
2. Activation bytes saved for backward per sample, measured here on CPU: the same diffusers block classes at
   reduced width (real head_dim, 2 heads), bf16 base + float32 LoRA under bf16 autocast as in training, with
   torch's saved-tensor hooks counting every tensor autograd keeps (deduplicated by storage, parameters
   excluded, per-forward constants removed by differencing batch 2 and batch 1). Solving two token mixes per
   block kind gives bytes = (a * image_tokens + b * text_tokens) * hidden, which scales to the real width and
   token counts. This assumes the GPU attention kernel keeps what the CPU one keeps (output + log-sum-exp,
   no s x s matrix), true of PyTorch's flash and memory-efficient SDPA kernels.
3. Arithmetic for everything else (formulas in FORMULAS below): bf16 weights, fp32 LoRA + grads + AdamW
   states, gradient checkpointing (block inputs + one block recomputed), sharding over N processes,
   text-encoder offload, a fixed allowance for the CUDA context and allocator.

    python -m benchmarks.memory_estimates            # writes benchmarks/results/memory_estimates.json, prints tables
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers.utils import logging as diffusers_logging
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from mogen.config import LoraConfig
from mogen.lora import attach_lora

GIB = 2**30
OUT = Path(__file__).resolve().parent / "results" / "memory_estimates.json"

# --- published configs (config.json of each Hugging Face repo; values cross-checked against public loaders that
# reproduce them, e.g. tenstorrent's SD3.5 FP8 helpers and FLUX.1 model loaders) ----------------------------------
SOURCES = {
    "sd35_medium": "stabilityai/stable-diffusion-3.5-medium: transformer/config.json, text_encoder*/config.json, vae/config.json",
    "sd35_large": "stabilityai/stable-diffusion-3.5-large: transformer/config.json (text encoders and VAE as 3.5-Medium)",
    "flux1_dev": "black-forest-labs/FLUX.1-dev: transformer/config.json, text_encoder (CLIP-L), text_encoder_2 (T5-XXL), vae",
    "clip_l": "openai/clip-vit-large-patch14 text config (SD3's text_encoder, FLUX's text_encoder)",
    "clip_bigg": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k text config (SD3's text_encoder_2)",
    "t5_xxl": "google/t5-v1_1-xxl encoder (SD3's text_encoder_3, FLUX's text_encoder_2)",
}
SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)),
)
SD35_LARGE = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
    pos_embed_max_size=192, qk_norm="rms_norm", dual_attention_layers=(),
)
FLUX1_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
VAE_16CH = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                use_quant_conv=False, use_post_quant_conv=False)

PUBLISHED_TOTALS = {  # what the model cards / papers say, for the check in tests/test_memory_estimates.py
    "sd35_medium.transformer": 2.5e9, "sd35_large.transformer": 8.1e9, "flux1_dev.transformer": 11.9e9,
    "t5_xxl_encoder": 4.7e9,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # sd3 | flux
    transformer: dict
    text_tokens: int  # tokens the transformer sees from the text side (mogen's defaults)
    cfg_factor: int  # 2: classifier-free guidance doubles the transformer batch (the SD3.5 recipes use g = 4.5)


MODELS = [
    ModelSpec("sd35_medium", "sd3", SD35_MEDIUM, 77 + 256, 2),  # CLIP 77 + T5 max_sequence_length 256
    ModelSpec("sd35_large", "sd3", SD35_LARGE, 77 + 256, 2),
    ModelSpec("flux1_dev", "flux", FLUX1_DEV, 512, 1),  # T5 512 tokens; guidance is an embedding, no CFG pass
]


def numel(module: torch.nn.Module) -> int:
    """Parameters plus buffers (SD3's positional embedding is a buffer, yet it is part of the checkpoint)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def build_transformer(spec: ModelSpec) -> torch.nn.Module:
    cls = SD3Transformer2DModel if spec.family == "sd3" else FluxTransformer2DModel
    return cls(**spec.transformer)


def count_parameters(lora_rank: int = 32) -> dict[str, dict[str, int]]:
    """Exact counts from the real classes on the meta device; LoRA counted by attaching mogen's peft adapter."""
    counts: dict[str, dict[str, int]] = {}
    with init_empty_weights(include_buffers=True):
        encoders = {
            "clip_l_with_projection": numel(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))),
            "clip_l": numel(CLIPTextModel(CLIPTextConfig(**CLIP_L))),
            "clip_bigg_with_projection": numel(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))),
            "t5_xxl_encoder": numel(T5EncoderModel(T5Config(**T5_XXL))),
            "vae": numel(AutoencoderKL(**VAE_16CH)),
        }
        for spec in MODELS:
            transformer = build_transformer(spec)
            total = numel(transformer)
            largest_block = max(numel(block) for block in _blocks(transformer))  # the unit FSDP gathers at once
            lora = sum(p.numel() for p in attach_lora(transformer, LoraConfig(rank=lora_rank, alpha=2 * lora_rank)))
            text = (["clip_l_with_projection", "clip_bigg_with_projection", "t5_xxl_encoder"] if spec.family == "sd3"
                    else ["clip_l", "t5_xxl_encoder"])
            counts[spec.name] = {
                "transformer": total,
                "lora": lora,
                "largest_block": largest_block,
                "text_encoders": sum(encoders[t] for t in text),
                "vae": encoders["vae"],
            }
    counts["encoders"] = encoders
    return counts


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", []))


# --- activation measurement -------------------------------------------------------------------------------------
class SavedBytes:
    """Bytes autograd saves for backward during a forward, attributed to the block running at the time."""

    def __init__(self, model: torch.nn.Module, blocks: dict[str, torch.nn.Module]):
        self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.current = "other"
        self.seen: dict[str, dict[int, int]] = {}
        for label, block in blocks.items():
            block.register_forward_pre_hook(lambda m, a, label=label: setattr(self, "current", label))
            block.register_forward_hook(lambda m, a, o: setattr(self, "current", "other"))

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.param_storages:
            self.seen.setdefault(self.current, {})[storage.data_ptr()] = storage.nbytes()
        return tensor

    def run(self, forward) -> dict[str, int]:
        self.seen = {}
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            out = forward()
        result = {label: sum(sizes.values()) for label, sizes in self.seen.items()}
        del out
        return result


def _measure_sd3(image_side: int, text_tokens: int, batch: int) -> tuple[dict[str, int], int]:
    """Saved bytes per block kind of a narrow SD3.5 transformer: block 0 dual-attention, 1 plain, 2 last (context_pre_only)."""
    torch.manual_seed(0)
    heads, head_dim = 2, 64
    hidden = heads * head_dim
    model = SD3Transformer2DModel(
        sample_size=image_side, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=64, caption_projection_dim=hidden, pooled_projection_dim=32,
        pos_embed_max_size=image_side, qk_norm="rms_norm", dual_attention_layers=(0,),
    ).to(torch.bfloat16)
    attach_lora(model, LoraConfig(rank=8, alpha=16))
    blocks = dict(zip(["joint_dual", "joint", "joint_last"], model.transformer_blocks))
    meter = SavedBytes(model, blocks)
    x = torch.randn(batch, 16, image_side, image_side, dtype=torch.bfloat16)
    text = torch.randn(batch, text_tokens, 64, dtype=torch.bfloat16)
    pooled = torch.randn(batch, 32, dtype=torch.bfloat16)
    t = torch.full((batch,), 500.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = meter.run(lambda: model(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t, return_dict=False,
        )[0])
    return saved, hidden


def _measure_flux(image_side: int, text_tokens: int, batch: int) -> tuple[dict[str, int], int]:
    """Saved bytes per block kind of a narrow FLUX.1 transformer: one double-stream and one single-stream block."""
    torch.manual_seed(0)
    heads, head_dim = 2, 128
    hidden = heads * head_dim
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    ).to(torch.bfloat16)
    attach_lora(model, LoraConfig(rank=8, alpha=16))
    blocks = {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}
    meter = SavedBytes(model, blocks)
    tokens = image_side * image_side // 4  # 2x2 latent patches packed into the channel dim, as FluxPipeline does
    side = image_side // 2
    grid = torch.meshgrid(torch.zeros(1), torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    img_ids = torch.stack(grid, -1).reshape(-1, 3)
    x = torch.randn(batch, tokens, 64, dtype=torch.bfloat16)
    text = torch.randn(batch, text_tokens, 64, dtype=torch.bfloat16)
    pooled = torch.randn(batch, 32, dtype=torch.bfloat16)
    t = torch.full((batch,), 0.5)
    guidance = torch.full((batch,), 3.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = meter.run(lambda: model(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t, guidance=guidance,
            img_ids=img_ids, txt_ids=torch.zeros(text_tokens, 3), return_dict=False,
        )[0])
    return saved, hidden


def activation_coefficients(family: str) -> dict[str, dict[str, float]]:
    """Per block kind: bytes saved per sample = (a * image_tokens + b * text_tokens) * hidden; fit on two token mixes.

    Also records the relative error of the fit on a third mix (linearity check: no s x s term)."""
    measure = _measure_sd3 if family == "sd3" else _measure_flux
    side = 16  # latent side; image tokens = (side / 2)^2 = 64 for both families
    mixes = [(side, 16), (side, 48), (8, 40)]  # (latent side, text tokens); the third one checks the fit
    per_sample = []
    for latent_side, text_tokens in mixes:
        one, hidden = measure(latent_side, text_tokens, batch=1)
        two, _ = measure(latent_side, text_tokens, batch=2)
        per_sample.append({k: two.get(k, 0) - one.get(k, 0) for k in two})
    img = [(s // 2) ** 2 for s, _ in mixes]
    txt = [t for _, t in mixes]
    coefficients = {}
    for kind in per_sample[0]:
        system = torch.tensor([[img[0], txt[0]], [img[1], txt[1]]], dtype=torch.float64) * hidden
        a, b = torch.linalg.solve(system, torch.tensor([per_sample[0][kind], per_sample[1][kind]], dtype=torch.float64)).tolist()
        predicted = (a * img[2] + b * txt[2]) * hidden
        measured = per_sample[2][kind]
        coefficients[kind] = {"a_image": a, "b_text": b, "check_relative_error": abs(predicted - measured) / max(measured, 1)}
    return coefficients


def block_kinds(spec: ModelSpec) -> dict[str, int]:
    """How many blocks of each measured kind the real model has."""
    if spec.family == "flux":
        return {"double": spec.transformer["num_layers"], "single": spec.transformer["num_single_layers"]}
    layers, dual = spec.transformer["num_layers"], len(spec.transformer["dual_attention_layers"])
    return {"joint_dual": dual, "joint": layers - dual - 1, "joint_last": 1}


def hidden_size(spec: ModelSpec) -> int:
    return spec.transformer["num_attention_heads"] * spec.transformer["attention_head_dim"]


def activations_per_sample(spec: ModelSpec, coefficients: dict, resolution: int) -> dict[str, float]:
    """Bytes kept for backward by one sample's transformer forward (x cfg_factor for the guided batch)."""
    h, s_img, s_txt = hidden_size(spec), (resolution // 16) ** 2, spec.text_tokens
    per_kind = {k: (c["a_image"] * s_img + c["b_text"] * s_txt) * h for k, c in coefficients.items()}
    kinds = block_kinds(spec)
    full = sum(per_kind[k] * n for k, n in kinds.items()) + per_kind.get("other", 0.0)
    # gradient checkpointing (diffusers: every block): each block keeps its bf16 inputs (image + text stream),
    # and backward recomputes one block at a time, so the largest block's activations come back once.
    checkpointed = sum(kinds.values()) * 2 * (s_img + s_txt) * h + max(per_kind[k] for k in kinds) + per_kind.get("other", 0.0)
    # rollouts run under no_grad: only a block's working set is alive; assumed ~12 bf16 tensors of tokens x hidden
    # (input, q/k/v, attention output, the 4x MLP hidden and its activation), an assumption, not a measurement.
    inference = 12 * 2 * (s_img + s_txt) * h
    return {k: v * spec.cfg_factor for k, v in {"full": full, "checkpointed": checkpointed, "inference": inference}.items()}


# --- fitting --------------------------------------------------------------------------------------------------
CONTEXT_ALLOWANCE = 2 * GIB  # CUDA context, cuBLAS workspaces, allocator fragmentation: a fixed allowance
ENGINES = {  # name -> (accelerate config, processes, what is sharded)
    "ddp": ("single_gpu.yaml / ddp_bf16.yaml", 1, "nothing"),
    "zero2_x8": ("DeepSpeed ZeRO-2 (refused by mogen align)", 8, "LoRA grads + optimizer"),
    "fsdp_x8": ("fsdp.yaml (FSDP2; ZeRO-3 is refused)", 8, "weights + LoRA grads + optimizer"),
    "fsdp_offload_x2": ("fsdp.yaml with fsdp_offload_params: true (untested)", 2, "weights on CPU"),
}
FORMULAS = {
    "weights": "transformer (params + buffers) x 2 bytes (bf16)",
    "lora_training_state": "LoRA params x (4 fp32 weight + 4 fp32 grad + 8 AdamW exp_avg/exp_avg_sq) bytes; "
                           "DDP adds one 4-byte gradient bucket",
    "sharded (fsdp_x8: FSDP2 FULL_SHARD or ZeRO-3)": "weights / N + 2 x largest block in bf16 (the gathered block and the "
                                                     "prefetched next) + LoRA state / N",
    "zero2_x8": "weights + LoRA weight + (LoRA grad + optimizer) / N",
    "fsdp_offload_x2": "2 x largest block in bf16 on the GPU; weights, grads and optimizer in CPU RAM",
    "text encoders": "bf16; resident unless model.offload, in which case they visit the GPU only while encoding (peak = static + encoders)",
    "activations (no checkpointing)": "sum over blocks of (a_kind x image_tokens + b_kind x text_tokens) x hidden bytes, "
                                      "a/b measured; x2 with CFG",
    "activations (checkpointing)": "blocks x 2 bytes x (image + text tokens) x hidden + the largest block's activations; x2 with CFG",
    "peak": "max(static + activations x micro_batch [+ encoders if not offloaded], static + encoders) + 2 GiB allowance",
    "micro_batch": "samples per transformer forward in the update = prompts_per_batch x group_size / processes / algorithm.minibatches",
}


def static_bytes(engine: str, spec: ModelSpec, counts: dict) -> float:
    c = counts[spec.name]
    weights, block, lora = 2 * c["transformer"], 2 * c["largest_block"], c["lora"]
    processes = ENGINES[engine][1]
    if engine == "ddp":
        return weights + lora * (4 + 4 + 8 + 4) + 2 * c["vae"]
    if engine == "zero2_x8":
        return weights + lora * 4 + lora * (4 + 8) / processes + 2 * c["vae"]
    if engine == "fsdp_x8":
        return weights / processes + 2 * block + lora * (4 + 4 + 8) / processes + 2 * c["vae"]
    return 2 * block + 2 * c["vae"]  # fsdp_offload


def max_batch(card: float, static: float, encoders: float, per_sample: float, offload: bool) -> int:
    """Largest number of samples per forward that fits (0: not even one).

    With offload the text encoders still visit the GPU all together while prompts are encoded (mogen's
    on_device moves them at once), next to the resident transformer: that phase must fit too."""
    if static + encoders + CONTEXT_ALLOWANCE > card:
        return 0
    budget = card - CONTEXT_ALLOWANCE - static - (0 if offload else encoders)
    return max(0, int(budget // per_sample))


def estimate(counts: dict, coefficients: dict[str, dict]) -> list[dict]:
    rows = []
    for spec in MODELS:
        encoders = 2 * counts[spec.name]["text_encoders"]
        for resolution in (512, 1024):
            acts = activations_per_sample(spec, coefficients[spec.family], resolution)
            for card_gib in (24, 80):
                for engine in ENGINES:
                    static = static_bytes(engine, spec, counts)
                    for offload in (False, True):
                        for checkpointing in (False, True):
                            per_sample = acts["checkpointed" if checkpointing else "full"]
                            rows.append({
                                "model": spec.name, "resolution": resolution, "card_gib": card_gib, "engine": engine,
                                "accelerate_config": ENGINES[engine][0], "processes": ENGINES[engine][1],
                                "offload_text_encoders": offload, "gradient_checkpointing": checkpointing,
                                "static_gib": round(static / GIB, 2), "encoders_gib": round(encoders / GIB, 2),
                                "activations_per_sample_gib": round(per_sample / GIB, 3),
                                "max_micro_batch": max_batch(card_gib * GIB, static, encoders, per_sample, offload),
                                "max_rollout_batch": max_batch(card_gib * GIB, static, encoders, acts["inference"], offload),
                            })
    return rows


def row_key(row: dict) -> tuple:
    """(model, resolution, card_gib, engine, offload_text_encoders, gradient_checkpointing) of a row of `estimate`."""
    return (row["model"], row["resolution"], row["card_gib"], row["engine"], row["offload_text_encoders"], row["gradient_checkpointing"])


def markdown(counts: dict, rows: list[dict]) -> str:
    lines = [
        "ESTIMATES (parameter and activation arithmetic, nothing run on a GPU). Max micro-batch = samples per update forward",
        "(SD3.5 counts its CFG pair as one sample); text encoders offloaded (model.offload: true); 'ckpt' = model.gradient_checkpointing.",
        "",
        "| model | weights bf16 | LoRA r32 (params) | act./sample 512 px (no ckpt / ckpt) | act./sample 1024 px | card | res "
        "| 1 GPU / DDP | ZeRO-2 x8 (refused) | FSDP2 x8 | FSDP2 offload x2 (untested) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    index = {row_key(r): r for r in rows}
    for spec in MODELS:
        c = counts[spec.name]
        act = {res: (index[(spec.name, res, 80, "ddp", True, False)]["activations_per_sample_gib"],
                     index[(spec.name, res, 80, "ddp", True, True)]["activations_per_sample_gib"]) for res in (512, 1024)}
        first = True
        for card in (24, 80):
            for res in (512, 1024):
                cells = []
                for engine in ENGINES:
                    no_ckpt = index[(spec.name, res, card, engine, True, False)]["max_micro_batch"]
                    ckpt = index[(spec.name, res, card, engine, True, True)]["max_micro_batch"]
                    cells.append("does not fit" if ckpt == 0 else f"{no_ckpt} / {ckpt} ckpt")
                head = (f"{spec.name} | {2 * c['transformer'] / GIB:.1f} GiB ({c['transformer'] / 1e9:.2f}B) | {c['lora'] / 1e6:.1f}M | "
                        f"{act[512][0]:.2f} / {act[512][1]:.2f} GiB | {act[1024][0]:.2f} / {act[1024][1]:.2f} GiB"
                        ) if first else " | | | | "
                first = False
                lines.append(f"| {head} | {card} GB | {res} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rollouts sample a process's whole shard (prompts_per_batch x group_size / processes) in one no-grad forward;",
        "largest shard that fits (assumed ~12 live bf16 tensors of tokens x hidden per sample), text encoders offloaded:",
        "",
        "| model | res | 24 GB: 1 GPU / DDP | 24 GB: FSDP2 x8 | 80 GB: 1 GPU / DDP | 80 GB: FSDP2 x8 |",
        "|---|---|---|---|---|---|",
    ]
    for spec in MODELS:
        for res in (512, 1024):
            cells = [index[(spec.name, res, card, engine, True, False)]["max_rollout_batch"]
                     for card in (24, 80) for engine in ("ddp", "fsdp_x8")]
            lines.append(f"| {spec.name} | {res} | " + " | ".join(str(c) if c else "does not fit" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()  # the narrow models are cast to bf16 with .to(), which diffusers warns about
    counts = count_parameters()
    coefficients = {family: activation_coefficients(family) for family in ("sd3", "flux")}
    rows = estimate(counts, coefficients)
    result = {
        "label": "ESTIMATES from parameter and activation arithmetic; nothing here was run on a GPU",
        "sources": SOURCES,
        "published_configs": {"sd35_medium": SD35_MEDIUM, "sd35_large": SD35_LARGE, "flux1_dev": FLUX1_DEV, "clip_l": CLIP_L,
                              "clip_bigg": CLIP_BIGG, "t5_xxl": T5_XXL, "vae": VAE_16CH},
        "parameters": counts,
        "published_totals": PUBLISHED_TOTALS,
        "activation_coefficients": coefficients,
        "assumptions": {
            "text_tokens": {m.name: m.text_tokens for m in MODELS}, "cfg_factor": {m.name: m.cfg_factor for m in MODELS},
            "image_tokens": "(resolution / 16)^2 (VAE /8, patch 2)", "context_allowance_gib": CONTEXT_ALLOWANCE / GIB,
            "lora": "rank 32 on to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out (mogen's default)",
            "not_modelled": "VAE decode of the whole rollout shard at once, reward models on the GPU, NCCL buffers",
        },
        "formulas": FORMULAS,
        "fits": rows,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(counts, rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
