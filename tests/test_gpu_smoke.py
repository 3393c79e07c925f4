"""benchmarks/gpu_smoke.py: its CPU `--toy` run trains the shipped SD3.5 recipe on a toy-width SD3.5-M-structured
pipeline and passes its on-policy check; its memory prediction is memory_estimates.py's for SD3.5-M."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mogen.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


@pytest.fixture(scope="module")
def smoke():
    """The script as a module (benchmarks is a package run from the repository root)."""
    return importlib.import_module("benchmarks.gpu_smoke")


def test_toy_run_trains_the_shipped_recipe_and_is_on_policy(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--toy", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "toy.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on-policy check" in done.stdout and "-> OK" in done.stdout
    result = json.loads((tmp_path / "toy.json").read_text())
    config = yaml.safe_load((tmp_path / "work" / "run" / "config.yaml").read_text())
    # the recipe's algorithm and sampler as shipped (UniRL's: one pass in 2 minibatches, no CFG); bf16 is swapped
    # for float32 only because this is CPU
    shipped = load_recipe(ROOT / "recipes" / "sd35" / "ocr_dppo.yaml")
    assert config["algorithm"] == shipped.algorithm.model_dump(mode="json") and config["algorithm"]["minibatches"] == 2
    assert config["sampler"]["guidance_scale"] == shipped.sampler.guidance_scale
    assert config["model"]["family"] == "sd3" and result["transformer"]["qk_norm"] == "rms_norm"
    # before the first optimizer step every loss call (one per trained step) sees the sampling policy: r == 1 ...
    ratios = result["on_policy"]["first_minibatch_ratios"]
    assert len(ratios) == config["sampler"]["train_steps"] and result["on_policy"]["ok"]
    assert all(low == high == 1.0 for low, high in ratios)
    # ... while the logged step-1 range, over both minibatches, shows the second one saw a moved policy
    assert result["on_policy"]["logged_step1_ratio_min"] < 1.0 < result["on_policy"]["logged_step1_ratio_max"]
    assert len(result["step_s"]) == result["steps"] == 2 and result["s_per_step"] > 0
    assert result["peak_gpu_gib"] is None and result["peak_rss_gib"] > 0
    assert result["predicted_gib"]["peak"] >= result["predicted_gib"]["static"] > 0
    assert str(ROOT) not in json.dumps(result)


def test_without_cuda_it_says_so_in_one_line(smoke, monkeypatch, capsys) -> None:
    monkeypatch.setattr(smoke.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_smoke.py"])
    assert smoke.main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--toy" in err


def test_prediction_for_sd35_medium_is_memory_estimates_own(smoke) -> None:
    """With SD3.5-M's real component sizes, the smoke's prediction repeats memory_estimates.json's DDP row at 512 px.
    The estimates assume classifier-free guidance (a doubled transformer batch), as the GRPO recipe (g = 4.5) does."""
    estimates = json.loads((ROOT / "benchmarks" / "results" / "memory_estimates.json").read_text())
    real = estimates["parameters"]["sd35_medium"]
    recipe = load_recipe(ROOT / "recipes" / "sd35" / "ocr_grpo.yaml")
    assert recipe.sampler.guidance_scale > 1
    counts = {"transformer": real["transformer"], "text_encoders": real["text_encoders"], "vae": real["vae"]}
    predicted = smoke.predicted_peak_bytes(smoke.SD35_MEDIUM_SIZE, recipe, counts)
    assert predicted["lora_params"] == real["lora"] and predicted["largest_block_params"] == real["largest_block"]
    (row,) = [r for r in estimates["fits"] if (r["model"], r["resolution"], r["card_gib"], r["engine"], r["offload_text_encoders"],
                                               r["gradient_checkpointing"]) == ("sd35_medium", 512, 80, "ddp", False, False)]
    assert predicted["static"] / GIB == pytest.approx(row["static_gib"], abs=0.005)
    assert predicted["encoders"] / GIB == pytest.approx(row["encoders_gib"], abs=0.005)
    per_sample = (predicted["update_phase"] - predicted["static"] - predicted["encoders"] - smoke.CONTEXT_ALLOWANCE) / predicted["micro_batch"]
    assert per_sample / GIB == pytest.approx(row["activations_per_sample_gib"], abs=0.0005)
    batch = recipe.rollout.prompts_per_batch * recipe.rollout.group_size
    assert predicted["rollout_batch"] == batch and predicted["micro_batch"] == batch // recipe.algorithm.minibatches
