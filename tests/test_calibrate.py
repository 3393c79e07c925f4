"""`mogen calibrate`: the trainer's numbers by construction, an exact on-policy first minibatch, its JSON, its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from accelerate.state import AcceleratorState
from typer.testing import CliRunner

from mogen.calibrate import calibrate
from mogen.cli import app
from mogen.config import ConfigError, load_recipe
from mogen.trust_region import binding_kl, matched_eps
from mogen.models.tiny import TinyT2I
from mogen.trainer import align

RECIPE = {
    "lora": {"rank": 4, "alpha": 8},
    "prompts": {"tasks": ["count"]},
    "rollout": {"prompts_per_batch": 2, "group_size": 4},
    "sampler": {"num_steps": 4, "train_window": [0, 2], "train_steps": 2},
    "algorithm": {"minibatches": 2, "delta": 1e-9},
    "optim": {"lr": 3e-3},
    "train": {"steps": 2, "sample_every": 100, "checkpoint_every": 100, "log_with": []},
    "rewards": [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "vivid"}],
}


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "model": {"name": str(tiny_model_dir)}, "output_dir": str(tmp_path / "run")}))
    return path


def test_mask_fraction_is_what_the_trainer_logs(recipe_file: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file)
    report = calibrate(recipe, steps=2)
    assert not (tmp_path / "run").exists()  # calibrate writes no run
    logged = [json.loads(line) for line in (align(recipe) / "metrics.jsonl").read_text().splitlines()]
    trust = report["trust_region"]
    assert trust["mask_fraction_per_step"] == [m["mask_fraction"] for m in logged]
    assert trust["mask_fraction_max"] > 0  # the second minibatch moved past the tiny delta
    # re-applying the recipe's delta to the recorded (kl, log r, A) of every sample-step gives the trainer's share
    assert trust["delta_mask_fraction"] == pytest.approx(trust["mask_fraction_mean"], abs=1e-6)
    # the threshold chosen for the target gives (about) the target share on the same records
    assert trust["delta_for_target"] is None or trust["delta_for_target"] > 0
    moved = report["kl_one_optimizer_step"]
    assert 0 < moved["median"] <= moved["p90"] <= moved["max"]
    # the KL one optimizer step moved: the second minibatch's own forward, logged by the trainer as kl/one_step
    assert moved["mean"] == pytest.approx(sum(m["kl/one_step"] for m in logged) / len(logged), rel=1e-5)


def test_first_minibatch_is_exactly_on_policy(recipe_file: Path) -> None:
    report = calibrate(load_recipe(recipe_file, ["algorithm.minibatches=1"]), steps=1)
    on_policy = report["on_policy"]
    assert on_policy["verdict"] == "exact"
    assert on_policy["first_minibatch_log_ratio_max"] == 0.0 and on_policy["first_minibatch_kl_max"] == 0.0
    assert on_policy["batch_shapes"]["8"]["log_prob_gap_max"] == 0.0  # the rollout's own batch shape: same bits
    # one optimizer step per batch: the moved KL is measured after the update, and log r spreads as sqrt(2 KL / D)
    (row_a, row_b) = report["kl_one_optimizer_step"]["per_denoising_step"]
    for row in (row_a, row_b):
        assert row["log_ratio_std"] == pytest.approx(row["predicted_log_ratio_std"], rel=0.5)


def test_bf16_autocast_reports_the_log_prob_gap(recipe_file: Path) -> None:
    AcceleratorState._reset_state(True)  # the process-wide state was made without mixed precision by other tests
    try:
        report = calibrate(load_recipe(recipe_file, ["train.mixed_precision=bf16"]), steps=1)
    finally:
        AcceleratorState._reset_state(True)
    gaps = report["on_policy"]["batch_shapes"]
    assert set(gaps) == {"8", "4", "1"}
    assert all(math.isfinite(g["log_prob_gap_max"]) and g["log_prob_gap_max"] >= 0 for g in gaps.values())
    assert report["on_policy"]["verdict"] in ("exact", "close", "mismatch")


def test_reference_equivalent_clip_range_binds_where_the_reference_does(recipe_file: Path) -> None:
    """The report's reference-equivalent eps is mogen.trust_region's: it binds on this D at the KL where flow_grpo's
    1e-4 binds on SD3.5's (tests/test_benchmarks_analysis.py checks that math against Monte Carlo)."""
    report = calibrate(load_recipe(recipe_file), steps=1)
    d, reference = report["latent_elements"], report["reference_equivalent"]
    assert reference["clip_range"] == pytest.approx(matched_eps(1e-4, 65536, d))
    assert binding_kl(reference["clip_range"], d) == pytest.approx(binding_kl(1e-4, 65536), rel=1e-6)
    assert reference["reference_clip_binds_at_kl"] == pytest.approx(1e-4, rel=0.01)


def test_cli_writes_the_json_report(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "calibration.json"
    result = CliRunner().invoke(app, ["calibrate", "--recipe", str(recipe_file), "--steps", "1", "--json", str(out),
                                      "--target-mask", "0.1"])
    assert result.exit_code == 0, result.output
    assert "on-policy" in result.stdout and "mask fraction" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"recipe", "latent_elements", "on_policy", "kl_one_optimizer_step", "trust_region",
                           "reference_equivalent", "rewards", "seconds"}
    assert report["latent_elements"] == math.prod(TinyT2I.from_pretrained(str(load_recipe(recipe_file).model.name)).latent_shape)
    assert report["trust_region"]["target_fraction"] == 0.1
    assert set(report["rewards"]["objectives"]) == {"toy_verifier_count", "vivid"}
    for health in report["rewards"]["objectives"].values():
        assert 0 <= health["groups_with_spread"] <= 1
    assert report["rewards"]["failed_fraction"] == 0.0 and report["rewards"]["reward_images_per_s"] > 0


def test_bad_input_is_one_line(recipe_file: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["calibrate", "--recipe", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "recipe file not found" in missing.stderr and "Traceback" not in missing.output
    bad_field = CliRunner().invoke(app, ["calibrate", "--recipe", str(recipe_file), "--set", "algorithm.delta=-1"])
    assert bad_field.exit_code == 2 and "algorithm.delta" in bad_field.stderr
    bad_target = CliRunner().invoke(app, ["calibrate", "--recipe", str(recipe_file), "--target-mask", "1.5"])
    assert bad_target.exit_code == 2 and "--target-mask must be in (0, 1)" in bad_target.stderr
    assert len(bad_target.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="target-mask"):
        calibrate(load_recipe(recipe_file), steps=1, target=0.0)
