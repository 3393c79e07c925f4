"""The published SD3.5 / FLUX.1 recipes: every one validates, and each family trains a step on a tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mogen.config import load_recipe
from mogen.trainer import align
from tiny_pipelines import IMAGE_SIZE, save_flux_pipeline, save_sd3_pipeline

RECIPES = Path(__file__).parents[1] / "recipes"
PAPER_RECIPES = sorted(p for family in ("sd35", "flux") for p in (RECIPES / family).glob("[a-z]*.yaml"))


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_recipe_validates_with_published_settings(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.rollout.group_size == 16 and recipe.sampler.num_steps == 10 and recipe.sampler.eta == 0.7
    assert recipe.sampler.train_steps == 3 and recipe.sampler.train_window[1] <= 5
    assert (recipe.lora.rank, recipe.lora.alpha, recipe.optim.lr) == (32, 64, 3e-4)
    assert recipe.model.dtype == "bfloat16" and recipe.train.mixed_precision == "bf16"
    if recipe.algorithm.name == "grpo":
        assert recipe.algorithm.clip_range == 1e-4 and recipe.algorithm.beta == 0.04
    else:
        assert recipe.algorithm.delta == 1e-5
    assert path.with_name(path.name.replace("dppo", "grpo") if "dppo" in path.name else path.name.replace("grpo", "dppo")).is_file()


@pytest.mark.parametrize(("recipe_name", "save"), [("sd35/ocr_dppo.yaml", save_sd3_pipeline), ("flux/multi_grpo.yaml", save_flux_pipeline)])
def test_paper_recipe_trains_on_a_tiny_pipeline(tmp_path: Path, recipe_name: str, save) -> None:
    """The recipe as published, with the model path, size and cost overridden: a real step of its algorithm."""
    model = save(tmp_path / "pipeline")
    recipe = load_recipe(RECIPES / recipe_name, [
        f"model.name={model}", f"model.resolution={IMAGE_SIZE}", "model.dtype=float32", "train.mixed_precision=no",
        "rollout.prompts_per_batch=1", "rollout.group_size=2", "train.steps=1", "train.log_with=[]",
        "prompts={source: toyworld}", "rewards=[{name: vivid}, {name: compressibility}]", f"output_dir={tmp_path / 'run'}",
    ])
    run = align(recipe)
    (metrics,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 4 minibatches x 2 passes: the first is on-policy (r = 1), later ones see a moved policy
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"]
    assert metrics["update/ratio_max"] > metrics["update/ratio_min"]
    assert metrics["kl/old_new"] > 0
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
