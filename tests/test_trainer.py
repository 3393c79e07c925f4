"""`mogen align` end to end on a small random tiny model: outputs, on-policy first update, reduction, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from mogen.cli import app

from mogen.config import load_recipe
from mogen.trainer import align

BASE_RECIPE = {
    "lora": {"rank": 4, "alpha": 8},
    "prompts": {"tasks": ["count"]},
    "rollout": {"prompts_per_batch": 2, "group_size": 4},
    "sampler": {"num_steps": 4, "train_window": [0, 2], "train_steps": 2},
    "train": {"steps": 2, "sample_every": 2, "checkpoint_every": 1, "log_with": []},
    "rewards": [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "vivid"}],
}


def _recipe_file(tmp_path: Path, model_dir: Path, name: str = "recipe.yaml", **sections) -> Path:
    data = {**BASE_RECIPE, "model": {"name": str(model_dir)}, "output_dir": str(tmp_path / "run"), **sections}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_align_writes_the_documented_run_layout(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = align(load_recipe(_recipe_file(tmp_path, tiny_model_dir)))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    required = {"reward/toy_verifier_count", "reward/vivid", "reward/total", "kl/old_new", "kl/ref", "mask_fraction",
                "time/rollout_s", "time/train_s"}
    assert required <= set(metrics[0])
    # One update pass with one minibatch: the update scores the rollout's own samples with the rollout's params.
    assert metrics[0]["update/ratio_min"] == metrics[0]["update/ratio_max"] == 1.0
    assert metrics[0]["update/kl_max"] == 0.0 and metrics[0]["kl/ref"] == 0.0
    assert metrics[0]["kl/old_new"] > 0  # ...and the update did move the policy
    assert metrics[1]["kl/ref"] > 0
    assert (run / "samples" / "step-2.png").is_file()
    assert (run / "checkpoints" / "step-2" / "lora.safetensors").is_file()
    assert (run / "lora" / "adapter.safetensors").is_file()
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()  # the diffusers format
    assert load_recipe(run / "config.yaml") == load_recipe(_recipe_file(tmp_path, tiny_model_dir))


def test_refuses_to_overwrite_a_run_without_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(_recipe_file(tmp_path, tiny_model_dir), ["train.steps=1"])
    align(recipe)
    with pytest.raises(FileExistsError, match="--resume"):
        align(recipe)


def test_single_objective_per_objective_mode_equals_paper_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With one objective, per-objective advantages/masks reduce to Flow-DPPO's single loss: same LoRA bits."""
    runs = []
    for mode in ("per_objective", "sum_then_normalize"):
        path = _recipe_file(tmp_path, tiny_model_dir, f"{mode}.yaml")
        recipe = load_recipe(path, [
            "rewards=[{name: toy_verifier, kwargs: {attribute: count}}]", f"advantage.mode={mode}",
            f"output_dir={tmp_path / mode}", "algorithm.updates_per_batch=2", "algorithm.delta=1e-9",
        ])
        runs.append(load_file(str(align(recipe) / "lora" / "adapter.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all((runs[0][k] == runs[1][k]).all() for k in runs[0])


def _run_cli(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mogen", "align", "--recipe", str(recipe), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_bit_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    steps = ["train.steps=4", "train.checkpoint_every=2", "train.sample_every=100"]
    straight = _recipe_file(tmp_path, tiny_model_dir, "straight.yaml")
    assert _run_cli(straight, *sum([["--set", s] for s in [*steps, f"output_dir={tmp_path / 'a'}"]], [])).wait() == 0

    interrupted = [*steps, f"output_dir={tmp_path / 'b'}"]
    process = _run_cli(straight, *sum([["--set", s] for s in interrupted], []))
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoints" / "step-2").is_dir():
        assert process.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "b" / "lora").exists()

    resumed = _run_cli(straight, *sum([["--set", s] for s in interrupted], []), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    a = load_file(str(tmp_path / "a" / "lora" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "b" / "lora" / "adapter.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    steps_logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4]


def test_bad_recipe_is_one_line_without_traceback(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _recipe_file(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["align", "--recipe", str(path), "--set", "rollout.group_size=1"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{path}: rollout.group_size: Input should be greater than or equal to 2" in result.stderr
    unknown = CliRunner().invoke(app, ["align", "--recipe", str(path), "--set", "rewards.0.name=nope"])
    assert unknown.exit_code == 2
    assert "rewards.0 (nope): unknown reward 'nope'" in unknown.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dry_run_prints_resolved_recipe(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _recipe_file(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["align", "--recipe", str(path), "--dry-run", "--set", "rollout.group_size=6"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["rollout"]["group_size"] == 6
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("chunk_size", ["null", "3"])  # 3: failures scored on the background thread, in chunks
def test_groups_with_failed_rewards_are_dropped_with_a_warning(tmp_path: Path, tiny_model_dir: Path, monkeypatch, chunk_size: str) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "reward_plugin"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\na blue square\n")
    path = _recipe_file(tmp_path, tiny_model_dir, prompts={"source": "file", "path": str(prompts)})
    recipe = load_recipe(path, ["rewards=[{name: fails_on_word, kwargs: {word: red}}]", "train.steps=1", f"rollout.chunk_size={chunk_size}"])
    with pytest.warns(UserWarning, match="dropping 4 samples whose group has a failed reward"):
        run = align(recipe)
    (metrics,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["reward/failed_fraction"] == 0.5
    assert metrics["reward/fails_on_word"] == metrics["reward/fails_on_word"]  # the mean over scored samples is not NaN


def test_every_group_failing_skips_the_update(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "reward_plugin"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\n")
    path = _recipe_file(tmp_path, tiny_model_dir, prompts={"source": "file", "path": str(prompts)})
    recipe = load_recipe(path, ["rewards=[{name: fails_on_word, kwargs: {word: red}}]", "train.steps=1"])
    with pytest.warns(UserWarning, match="dropping 8 samples"):
        run = align(recipe)
    weights = load_file(str(run / "lora" / "adapter.safetensors"))
    assert all((v == 0).all() for k, v in weights.items() if "lora_B" in k)  # no update happened


def test_probes_run_before_training_and_every_n_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    suite = Path(__file__).parents[1] / "recipes" / "eval" / "toy_quick.yaml"
    path = _recipe_file(tmp_path, tiny_model_dir, eval={"suites": [str(suite)], "every": 2})
    run = align(load_recipe(path))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[0]["probe/kl_base/kl"] == 0.0  # the LoRA starts at zero: the policy is the base model
    assert metrics[2]["probe/kl_base/kl"] > 0.0
    assert "probe/heldout_count/count" in metrics[2] and "probe/heldout_count/count" not in metrics[1]


def test_gradient_checkpointing_gives_the_same_update(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _recipe_file(tmp_path, tiny_model_dir)
    loras = []
    for flag in (False, True):
        recipe = load_recipe(path, [f"model.gradient_checkpointing={str(flag).lower()}", "train.steps=1", f"output_dir={tmp_path / str(flag)}"])
        loras.append(load_file(str(align(recipe) / "lora" / "adapter.safetensors")))
    assert all(torch.allclose(loras[0][k], loras[1][k], atol=1e-7) for k in loras[0])
    assert any((v != 0).any() for k, v in loras[1].items() if "lora_B" in k)


def test_diagnostics_follow_their_schedule_and_change_no_bit(tmp_path: Path, tiny_model_dir: Path) -> None:
    """kl/ref and kl/old_new cost extra forwards: measured at step 1, every N steps and the last step, omitted (not a
    fake 0) otherwise. Measuring draws nothing random, so the run is the same bits either way."""
    path = _recipe_file(tmp_path, tiny_model_dir)
    runs = {}
    for every in (1, 3):
        recipe = load_recipe(path, ["train.steps=4", f"train.diagnostics_every={every}", "algorithm.minibatches=2",
                                    f"output_dir={tmp_path / str(every)}"])
        run = align(recipe)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        runs[every] = metrics, load_file(str(run / "lora" / "adapter.safetensors"))
    (dense, dense_lora), (sparse, sparse_lora) = runs[1], runs[3]
    assert [("kl/ref" in m, "kl/old_new" in m) for m in sparse] == [(True, True), (False, False), (True, True), (True, True)]
    assert all(("kl/ref" in m) and ("kl/old_new" in m) for m in dense)
    assert all(m["kl/one_step"] > 0 for m in sparse)  # free: the second minibatch's forward sees a moved policy
    for full, thin in zip(dense, sparse):
        assert {k: v for k, v in thin.items() if not k.startswith("time/")} == {
            k: full[k] for k in thin if not k.startswith("time/")}
    assert all(torch.equal(dense_lora[k], sparse_lora[k]) for k in dense_lora)


def test_a_ref_kl_budget_measures_kl_ref_at_every_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _recipe_file(tmp_path, tiny_model_dir)
    recipe = load_recipe(path, ["train.steps=3", "train.diagnostics_every=10", "rewards.1.max_ref_kl=1e-3"])
    metrics = [json.loads(line) for line in (align(recipe) / "metrics.jsonl").read_text().splitlines()]
    assert all("kl/ref" in m and "gate/vivid" in m for m in metrics)  # the gate needs it at every step
    assert ["kl/old_new" in m for m in metrics] == [True, False, True]


def _run(path: Path, output: Path, *overrides: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    run = align(load_recipe(path, [*overrides, f"output_dir={output}"]))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return metrics, load_file(str(run / "lora" / "adapter.safetensors"))


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


def test_overlapped_scoring_changes_no_bit(tmp_path: Path, tiny_model_dir: Path) -> None:
    """rollout.overlap scores each chunk on a background thread while the next one samples: the rewards come back in
    sample order and the LoRA is bit for bit the one of scoring after sampling. Chunks of 3 do not divide the 8
    samples (the last chunk is shorter). Against the one-chunk rollout the noise is the same; the forwards over
    3 samples round differently from those over 8 (CPU GEMM kernels depend on the batch), so that run agrees to
    float precision."""
    path = _recipe_file(tmp_path, tiny_model_dir)
    common = ["train.steps=2", "algorithm.minibatches=2"]
    serial = _run(path, tmp_path / "serial", *common, "rollout.chunk_size=3", "rollout.overlap=false")
    overlapped = _run(path, tmp_path / "overlapped", *common, "rollout.chunk_size=3")
    whole = _run(path, tmp_path / "whole", *common)
    assert _untimed(overlapped[0]) == _untimed(serial[0])
    assert all(torch.equal(overlapped[1][k], serial[1][k]) for k in serial[1])
    assert any((v != 0).any() for k, v in overlapped[1].items() if "lora_B" in k)
    assert all(m["time/reward_wait_s"] <= m["time/reward_s"] + 1e-3 for m in overlapped[0])
    for chunked, one in zip(_untimed(overlapped[0]), _untimed(whole[0])):
        assert chunked.keys() == one.keys()
        # update/loss is -mean(advantage * ratio): the advantages sum to 0, so it is rounding-sized and compared absolutely
        assert chunked.pop("update/loss") == pytest.approx(one.pop("update/loss"), abs=1e-5)
        assert {k: (chunked[k], one[k]) for k in one if chunked[k] != pytest.approx(one[k], rel=1e-4, abs=1e-9)} == {}
    assert all(torch.allclose(overlapped[1][k], whole[1][k], rtol=1e-3, atol=1e-6) for k in whole[1])
