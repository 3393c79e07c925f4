"""DiffusionNFT and AWM through `mogen align` (mogen/forward_update.py and its trainer wiring): recipe errors, a
step on the tiny model and on a tiny SD3 pipeline, the old adapter's EMA rule, the seed contract, resume, and the
update that equal advantages must not make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from typer.testing import CliRunner

from mogen.cli import app
from mogen.config import ConfigError, load_recipe
from mogen.lora import lora_state_dict
from mogen.trainer import align, build_components
from tiny_pipelines import IMAGE_SIZE, save_sd3_pipeline

ROOT = Path(__file__).parents[1]
RECIPE = {
    "lora": {"rank": 4, "alpha": 8},
    "prompts": {"tasks": ["count"]},
    "rollout": {"prompts_per_batch": 2, "group_size": 4},
    "sampler": {"num_steps": 4, "train_window": [0, 3], "train_steps": 2},
    "train": {"steps": 1, "sample_every": 100, "checkpoint_every": 1, "keep_checkpoints": 5, "log_with": []},
    "rewards": [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "vivid"}],
}


def _recipe(tmp_path: Path, model: Path, algorithm: str, name: str, *overrides: str, **sections):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "model": {"name": str(model)}, "output_dir": str(tmp_path / name), **sections}))
    return load_recipe(path, [f"algorithm.name={algorithm}", *overrides])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


def _checkpoint(run: Path, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trained LoRA, old adapter) of checkpoints/step-<step>."""
    folder = run / "checkpoints" / f"step-{step}"
    return load_file(str(folder / "lora.safetensors")), load_file(str(folder / "old_lora.safetensors"))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.name=nft", "rewards.1.kl_budget=1e-5"],
     "rewards.1.kl_budget: a per-objective DPPO delta, and nft has no per-step trust region"),
    (["algorithm.name=awm", "sampler.kind=ode", "rewards.0.max_ref_kl=1e-3"],
     "rewards.0.max_ref_kl: needs kl/ref, measured exactly on the rollout's stochastic steps"),
    (["sampler.kind=ode"], "sampler.kind: 'ode' has no stochastic step for dppo to train"),
    (["algorithm.name=awm", "sampler.train_window=[0, 3]", "sampler.train_steps=3"],
     "algorithm.awm.include_init: false leaves 2 step times in sampler.train_window [0, 3], fewer than sampler.train_steps (3)"),
    (["algorithm.name=nft", "algorithm.nft.beta=0"], "algorithm.nft.beta: Input should be greater than 0"),
])
def test_recipe_errors_are_one_line_naming_the_field(tmp_path: Path, overrides: list[str], message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}))
    with pytest.raises(ConfigError) as err:
        load_recipe(path, overrides)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)
    assert load_recipe(path, ["algorithm.name=nft", "rewards.1.max_ref_kl=1e-3"]).rewards[1].max_ref_kl == 1e-3  # SDE: fine


def test_nft_ema_flat_steps_keep_the_old_adapter_a_copy_first(tmp_path: Path, tiny_model_dir: Path) -> None:
    """DiffusionNFT's OCR schedule: decay 0 for the flat steps (old == trained after the update), then the ramp from 0."""
    recipe = _recipe(tmp_path, tiny_model_dir, "nft", "run", "algorithm.nft.ema_flat_steps=2", "algorithm.nft.ema_ramp=0.25",
                     "train.steps=3", "train.checkpoint_every=1")
    metrics = _metrics(align(recipe))
    assert [m["update/old_decay"] for m in metrics] == [0.0, 0.0, 0.25]
    trained, old = _checkpoint(tmp_path / "run", 2)
    assert _equal(trained, old)


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_a_step_trains_the_lora_and_moves_the_old_adapter_by_the_ema_rule(tmp_path: Path, tiny_model_dir: Path, algorithm: str) -> None:
    """decay after step s = min(ramp * s, max): 0.25 after step 1, capped at 0.4 after step 2; before step 1 the old
    adapter is the initial LoRA (built again here from the same seed)."""
    ema = [f"algorithm.{algorithm}.ema_ramp=0.25", f"algorithm.{algorithm}.ema_max=0.4"]
    recipe = _recipe(tmp_path, tiny_model_dir, algorithm, "run", *ema, "train.steps=2", "algorithm.minibatches=2")
    initial = lora_state_dict(build_components(recipe, Accelerator()).policy.transformer)
    run = align(recipe)
    metrics = _metrics(run)
    assert [m["update/old_decay"] for m in metrics] == [0.25, 0.4]
    assert all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for m in metrics for v in m.values())
    assert "mask_fraction" not in metrics[0] and metrics[0]["kl/old_new"] > 0 and metrics[0]["kl/ref"] == 0
    trained_1, old_1 = _checkpoint(run, 1)
    assert any((v != 0).any() for k, v in trained_1.items() if "lora_B" in k)  # the LoRA trained
    for key in trained_1:
        torch.testing.assert_close(old_1[key], 0.25 * initial[key] + 0.75 * trained_1[key])
    trained_2, old_2 = _checkpoint(run, 2)
    for key in trained_2:
        torch.testing.assert_close(old_2[key], 0.4 * old_1[key] + 0.6 * trained_2[key])
    exported = load_file(str(run / "lora" / "pytorch_lora_weights.safetensors"))
    assert len(exported) == len(trained_2) and not any(".old." in k for k in exported)  # the trained adapter only
    assert _equal(load_file(str(run / "lora" / "adapter.safetensors")), trained_2)
    if algorithm == "awm":  # the second minibatch's ell_old came from the sampling policy: the ratio moved off 1
        assert metrics[0]["update/ratio_min"] < metrics[0]["update/ratio_max"]
        assert metrics[0]["update/ema_penalty"] > 0
    else:
        assert metrics[0]["update/old_deviation"] > 0 and metrics[0]["update/r_mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_nft_samples_with_the_old_adapter_awm_with_the_trained_one(tmp_path: Path, tiny_model_dir: Path, algorithm: str) -> None:
    """With EMA decay 1 the old adapter stays the initial LoRA, which is the base model (B = 0): NFT's rollouts then
    stay the base model's (kl/ref, the sampling policy's exact KL to the base, is 0) while its LoRA trains."""
    run = align(_recipe(tmp_path, tiny_model_dir, algorithm, "run", f"algorithm.{algorithm}.ema_ramp=1",
                        f"algorithm.{algorithm}.ema_max=1", "train.steps=2", "train.diagnostics_every=1"))
    second = _metrics(run)[1]
    assert second["update/old_decay"] == 1.0 and second["kl/old_new"] > 0
    assert (second["kl/ref"] == 0) == (algorithm == "nft")


def test_objectives_are_combined_with_dppos_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A = sum_k w_k g_k A_k: an objective of weight 0 changes no bit of the update."""
    alone = align(_recipe(tmp_path, tiny_model_dir, "awm", "alone", rewards=[{"name": "vivid"}]))
    with_zero = align(_recipe(tmp_path, tiny_model_dir, "awm", "with_zero", rewards=[
        {"name": "vivid"}, {"name": "toy_verifier", "kwargs": {"attribute": "count"}, "weight": 0.0}]))
    assert _equal(_checkpoint(alone, 1)[0], _checkpoint(with_zero, 1)[0])
    weighted = align(_recipe(tmp_path, tiny_model_dir, "awm", "weighted", rewards=[
        {"name": "vivid"}, {"name": "toy_verifier", "kwargs": {"attribute": "count"}, "weight": 0.5}]))
    assert not _equal(_checkpoint(alone, 1)[0], _checkpoint(weighted, 1)[0])


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_same_seed_same_lora_other_seed_another(tmp_path: Path, tiny_model_dir: Path, algorithm: str) -> None:
    loras = [
        _checkpoint(align(_recipe(tmp_path, tiny_model_dir, algorithm, name, f"train.seed={seed}")), 1)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert _equal(loras[0][0], loras[1][0]) and _equal(loras[0][1], loras[1][1])
    assert not _equal(loras[0][0], loras[2][0])


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_resume_continues_bit_for_bit_with_the_old_adapter(tmp_path: Path, tiny_model_dir: Path, algorithm: str) -> None:
    """A run stopped after its step-2 checkpoint and resumed equals the straight run, old adapter included."""
    common = ["algorithm.minibatches=2", "algorithm.beta=0.01", f"algorithm.{algorithm}.ema_ramp=0.2",
              "train.diagnostics_every=1"]  # the stopped run's last step measures them anyway
    straight = align(_recipe(tmp_path, tiny_model_dir, algorithm, "straight", *common, "train.steps=3"))
    stopped = _recipe(tmp_path, tiny_model_dir, algorithm, "resumed", *common, "train.steps=2")
    align(stopped)
    resumed = align(stopped.model_copy(update={"train": stopped.train.model_copy(update={"steps": 3})}), resume=True)
    (a_lora, a_old), (b_lora, b_old) = _checkpoint(straight, 3), _checkpoint(resumed, 3)
    assert _equal(a_lora, b_lora) and _equal(a_old, b_old)
    assert not _equal(a_lora, a_old)  # the old adapter lags: resuming it from the LoRA would not do
    assert _untimed(_metrics(straight)) == _untimed(_metrics(resumed))


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_equal_advantages_leave_the_policy_where_it_is(tmp_path: Path, tiny_model_dir: Path, monkeypatch, algorithm: str) -> None:
    """A reward every sample scores the same gives A = 0: NFT's r = 1/2 balances the positive and negative
    policies (zero gradient at v = v_old), AWM's a = 0. Two minibatches, a base penalty and AWM's EMA penalty
    (all zero at the start) run too; AWM's second minibatch reads ell_old from its no-grad pre-pass, which must
    equal the training forward's ell exactly (ratio 1)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "reward_plugin"))
    recipe = _recipe(tmp_path, tiny_model_dir, algorithm, "run", "algorithm.minibatches=2", "algorithm.beta=0.1",
                     rewards=[{"name": "mean_brightness", "kwargs": {"gain": 0.0}}])
    run = align(recipe)
    (metrics,) = _metrics(run)
    assert metrics["update/grad_norm"] == 0
    trained, old = _checkpoint(run, 1)
    assert all((v == 0).all() for k, v in trained.items() if "lora_B" in k) and _equal(trained, old)
    if algorithm == "awm":
        assert metrics["update/ratio_min"] == metrics["update/ratio_max"] == 1.0
    else:
        assert metrics["update/r_mean"] == 0.5


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_ode_rollouts_train_without_exact_kl_diagnostics(tmp_path: Path, tiny_model_dir: Path, algorithm: str) -> None:
    run = align(_recipe(tmp_path, tiny_model_dir, algorithm, "run", "sampler.kind=ode", "algorithm.updates_per_batch=2"))
    (metrics,) = _metrics(run)
    assert not {"kl/ref", "kl/old_new", "mask_fraction"} & metrics.keys() and metrics["update/loss"] == metrics["update/loss"]
    assert any((v != 0).any() for k, v in _checkpoint(run, 1)[0].items() if "lora_B" in k)


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sd3_pipeline(tmp_path_factory.mktemp("models") / "sd3")


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_a_step_on_a_tiny_sd3_pipeline(tmp_path: Path, sd3_folder: Path, algorithm: str) -> None:
    recipe = _recipe(tmp_path, sd3_folder, algorithm, "run", "model.family=sd3", f"model.resolution={IMAGE_SIZE}",
                     "sampler.shift=3.0", "sampler.guidance_scale=2.0", "algorithm.minibatches=2", "algorithm.beta=1e-3",
                     rewards=[{"name": "vivid"}, {"name": "compressibility"}])
    run = align(recipe)
    (metrics,) = _metrics(run)
    assert metrics["kl/old_new"] > 0 and metrics["update/ref_penalty"] >= 0 and metrics["update/grad_norm"] > 0
    trained, old = _checkpoint(run, 1)
    assert any((v != 0).any() for k, v in trained.items() if "lora_B" in k) and not _equal(trained, old)
    exported = load_file(str(run / "lora" / "pytorch_lora_weights.safetensors"))
    assert len(exported) == len(trained) and all(k.startswith("transformer.") for k in exported)


def test_the_quickstart_runs_nft_from_the_command_line(tmp_path: Path) -> None:
    quickstart = str(ROOT / "recipes" / "quickstart.yaml")
    common = ["--set", "algorithm.name=nft", "--set", "train.steps=2"]
    dry = CliRunner().invoke(app, ["align", "--recipe", quickstart, *common, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    printed = yaml.safe_load(dry.stdout)["algorithm"]
    assert printed["name"] == "nft" and printed["nft"]["beta"] == 1.0 and printed["nft"]["time_scheme"] == "grid_subset"
    cheaper = ["--set", "rollout.prompts_per_batch=2", "--set", "eval.suites=[]", "--set", "train.log_with=[]",
               "--set", f"output_dir={tmp_path / 'run'}"]
    result = CliRunner().invoke(app, ["align", "--recipe", quickstart, *common, *cheaper])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "old_lora.safetensors").is_file()
