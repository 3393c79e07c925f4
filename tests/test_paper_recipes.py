"""The published SD3.5 / FLUX.1 recipes: every one validates, and each family trains a step on a tiny pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mogen.config import load_recipe
from mogen.trainer import align
from tiny_pipelines import IMAGE_SIZE, save_flux_pipeline, save_sd3_pipeline

RECIPES = Path(__file__).parents[1] / "recipes"
PAPER_RECIPES = sorted(p for family in ("sd35", "flux") for p in (RECIPES / family).glob("[a-z]*.yaml"))


# What each reference publishes (the recipes' comments name the files); FLUX.1 Flow-DPPO has no reference and
# carries UniRL's SD3.5 values over.
UNIRL_DPPO = {  # UniRL examples/diffusion/sd3_flowdppo.yaml
    "algorithm": {"beta": 0.0, "updates_per_batch": 1, "minibatches": 2, "delta": 5e-6},
    "advantage": {"std": "batch", "clip": None},
    "rollout": {"prompts_per_batch": 48, "group_size": 16},
    "sampler": {"eta": 0.7, "num_steps": 10, "train_window": (0, 5), "train_steps": 3},
    "optim": {"lr": 3e-4, "weight_decay": 0.0},
}
FLOW_GRPO_SD3 = {  # flow_grpo config/grpo.py general_ocr_sd3 / pickscore_sd3, config/base.py
    "algorithm": {"clip_range": 1e-4, "updates_per_batch": 1, "minibatches": 2},
    "advantage": {"std": "batch", "clip": 5.0},
    "rollout": {"prompts_per_batch": 48, "group_size": 24},
    "sampler": {"eta": 0.7, "num_steps": 10, "guidance_scale": 4.5, "train_window": (0, 9), "train_steps": 9},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4},
    "lora": {"init": "gaussian"},
}
FLOW_GRPO_FLUX = {  # flow_grpo config/grpo.py pickscore_flux
    "algorithm": {"clip_range": 1e-4, "beta": 0.0, "updates_per_batch": 1, "minibatches": 2},
    "advantage": {"std": "batch", "clip": 5.0},
    "rollout": {"prompts_per_batch": 48, "group_size": 24},
    "sampler": {"eta": 0.9, "num_steps": 6, "guidance_scale": 3.5, "train_window": (0, 5), "train_steps": 5},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4},
    "lora": {"rank": 64, "alpha": 128, "init": "gaussian"},
}
DIFFUSION_NFT_SD3 = {  # NVlabs/DiffusionNFT config/nft.py _get_config, config/base.py
    "algorithm": {"updates_per_batch": 1, "beta": 1e-4},
    "advantage": {"std": "batch", "clip": None},
    "rollout": {"prompts_per_batch": 48, "group_size": 24},
    "sampler": {"kind": "ode", "num_steps": 10, "guidance_scale": 1.0, "train_window": (0, 10), "train_steps": 9},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4},
    "lora": {"init": "gaussian"},
}
NFT_BY_TASK = {  # config/nft.py: sd3_pickscore (beta 1, decay type 1, 1 gradient step), sd3_ocr (beta 0.1, type 2, 2 steps)
    "pickscore": ({"beta": 1.0, "ema_ramp": 0.001, "ema_max": 0.5, "ema_flat_steps": 0}, 1),
    "ocr": ({"beta": 0.1, "ema_ramp": 0.015, "ema_max": 0.999, "ema_flat_steps": 38}, 2),
}
AWM_SD3_OCR = {  # scxue/advantage_weighted_matching config/dgx_awm.py ocr_sd3_no_cfg_1node, config/base_awm.py
    "algorithm": {"updates_per_batch": 1, "minibatches": 1, "beta": 3e-3},
    "advantage": {"std": "batch", "clip": None},
    "rollout": {"prompts_per_batch": 48, "group_size": 24},
    "sampler": {"kind": "ode", "num_steps": 14, "guidance_scale": 1.0, "train_window": (0, 12), "train_steps": 6},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4},
}
FLOW_FACTORY_NFT_FLUX = {  # Flow-Factory examples/nft/lora/flux1/default.yaml
    "algorithm": {"updates_per_batch": 1, "minibatches": 1, "beta": 0.0},
    "advantage": {"std": "group", "clip": None},
    "rollout": {"prompts_per_batch": 48, "group_size": 16},
    "sampler": {"kind": "ode", "num_steps": 8, "guidance_scale": 1.0, "train_window": (0, 5), "train_steps": 2},
    "optim": {"lr": 3e-4, "weight_decay": 1e-4},
    "lora": {"rank": 64, "alpha": 128},
}
# flow_grpo's KL penalty is the exact KL x |dt|: its beta times the mean |dt| of its trained steps 0-8 (0.110)
FLOW_GRPO_BETA = {"ocr": 0.04 * 0.110, "pickscore": 0.01 * 0.110, "multi": 0.04 * 0.110}


def _pinned(path: Path) -> dict:
    family, algorithm = path.parent.name, path.stem.split("_")[-1]
    if algorithm == "nft" and family == "flux":
        return FLOW_FACTORY_NFT_FLUX
    if algorithm == "nft":
        nft, minibatches = NFT_BY_TASK[path.stem.split("_")[0]]
        return {**DIFFUSION_NFT_SD3, "algorithm": {**DIFFUSION_NFT_SD3["algorithm"], "minibatches": minibatches}, "nft": nft}
    if algorithm == "awm":
        return AWM_SD3_OCR
    if algorithm == "dppo":
        expected = {**UNIRL_DPPO, "sampler": {**UNIRL_DPPO["sampler"], "guidance_scale": 1.0 if family == "sd35" else 3.5}}
        return {**expected, "lora": {"rank": 32, "alpha": 64, "init": "default"} if family == "sd35" else {"rank": 64, "alpha": 128}}
    if family == "flux":
        return FLOW_GRPO_FLUX
    return {**FLOW_GRPO_SD3, "algorithm": {**FLOW_GRPO_SD3["algorithm"], "beta": FLOW_GRPO_BETA[path.stem.split("_")[0]]}}


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_recipe_validates_with_published_settings(path: Path) -> None:
    recipe = load_recipe(path)
    for section, values in _pinned(path).items():
        for field, value in values.items():
            owner = recipe.algorithm if section in ("nft", "awm") else recipe
            got = getattr(getattr(owner, section), field)
            assert got == pytest.approx(value, rel=1e-9) if isinstance(value, float) else got == value, f"{section}.{field}: {got}"
    assert recipe.algorithm.name == path.stem.split("_")[-1]
    flux_nft = path.parent.name == "flux" and recipe.algorithm.name == "nft"  # Flow-Factory's: 384 px, its shift there
    assert recipe.model.dtype == "bfloat16" and recipe.train.mixed_precision == "bf16" and recipe.model.resolution == (384 if flux_nft else 512)
    assert recipe.train.grad_clip == 1.0
    if path.parent.name == "sd35":
        assert (recipe.lora.rank, recipe.lora.alpha, recipe.sampler.shift) == (32, 64, 3.0)
    else:
        assert "ff.net.2" in recipe.lora.target_modules and recipe.sampler.shift == (1.74 if flux_nft else 1.88)
    if recipe.algorithm.name in ("dppo", "grpo"):  # every published DPPO recipe has its GRPO twin and back
        assert path.with_name(path.name.replace("dppo", "grpo") if "dppo" in path.name else path.name.replace("grpo", "dppo")).is_file()


def test_flux_dynamic_shift_at_384_px_is_what_the_pipeline_computes() -> None:
    """e^mu with mu interpolated between base_shift 0.5 at 256 image tokens and max_shift 1.15 at 4096 (FLUX.1-dev's
    scheduler config, as diffusers' calculate_shift): 576 tokens at 384 px."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    tokens = (384 // 16) ** 2
    assert round(math.exp(calculate_shift(tokens, 256, 4096, 0.5, 1.15)), 2) == load_recipe(RECIPES / "flux" / "pickscore_nft.yaml").sampler.shift


def test_every_published_value_names_its_source() -> None:
    """The shared files say where their values come from: a repository file for each reference."""
    for family in ("sd35", "flux"):
        text = " ".join((RECIPES / family / f"_{part}.yaml").read_text() for part in ("base", "dppo", "grpo"))
        assert "config/grpo.py" in text and "train_" in text
        assert "examples/diffusion/sd3_flowdppo.yaml" in text
    assert "unirl/train/stack.py" in (RECIPES / "sd35" / "_dppo.yaml").read_text()


def _on_tiny_pipeline(recipe_name: str, save, tmp_path: Path, group_size: int):
    """A shipped recipe with its model replaced by a tiny random pipeline of the same family and its cost cut to one
    step of one prompt (toy-world prompts, two download-free rewards); every other published value is kept."""
    model = save(tmp_path / "pipeline")
    return load_recipe(RECIPES / recipe_name, [
        f"model.name={model}", f"model.resolution={IMAGE_SIZE}", "model.dtype=float32", "train.mixed_precision=no",
        "rollout.prompts_per_batch=1", f"rollout.group_size={group_size}", "train.steps=1", "train.log_with=[]",
        "prompts={source: toyworld}", "rewards=[{name: vivid}, {name: compressibility}]", f"output_dir={tmp_path / 'run'}",
    ])


@pytest.mark.parametrize(("recipe_name", "save"), [
    ("sd35/ocr_dppo.yaml", save_sd3_pipeline),
    ("sd35/ocr_grpo.yaml", save_sd3_pipeline),  # CFG 4.5, 9 trained steps, a KL penalty to the base
    ("flux/multi_grpo.yaml", save_flux_pipeline),  # LoRA on the feed-forward layers too
])
def test_paper_recipe_trains_on_a_tiny_pipeline(tmp_path: Path, recipe_name: str, save) -> None:
    """The recipe as published, with the model path, size and cost overridden: a real step of its algorithm."""
    recipe = _on_tiny_pipeline(recipe_name, save, tmp_path, group_size=2)
    run = align(recipe)
    (metrics,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # one pass in 2 minibatches: the first is on-policy (r = 1), the second sees the policy the first moved
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"]
    assert metrics["update/ratio_max"] > metrics["update/ratio_min"]
    assert metrics["kl/old_new"] > 0
    assert ("update/kl_ref_penalty" in metrics) == (recipe.algorithm.beta > 0)  # the base's means were recorded and used
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(("recipe_name", "save", "stat"), [
    ("sd35/ocr_nft.yaml", save_sd3_pipeline, "update/positive_loss"),  # 2 minibatches, beta 0.1, the flat EMA phase
    ("sd35/ocr_awm.yaml", save_sd3_pipeline, "update/matching_error"),  # 14 ODE steps, 6 stratified times, EMA penalty
    ("flux/pickscore_nft.yaml", save_flux_pipeline, "update/positive_loss"),
])
def test_likelihood_free_recipe_trains_on_a_tiny_pipeline(tmp_path: Path, recipe_name: str, save, stat: str) -> None:
    """The NFT/AWM recipes as published (ODE rollouts, their time windows and EMA), model and cost overridden: a real
    step trains the LoRA, moves the old adapter by the recipe's EMA rule and exports the trained adapter."""
    recipe = _on_tiny_pipeline(recipe_name, save, tmp_path, group_size=4)
    run = align(recipe)
    (metrics,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[stat]) and math.isfinite(metrics["update/loss"])
    assert "kl/old_new" not in metrics and "mask_fraction" not in metrics  # ODE rollouts: no stochastic step to measure
    expected_decay = 0.0 if recipe.algorithm.name == "nft" and recipe.algorithm.nft.ema_flat_steps else 0.001
    assert metrics["update/old_decay"] == pytest.approx(expected_decay)
    assert ("update/ref_penalty" in metrics) == (recipe.algorithm.beta > 0)
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
