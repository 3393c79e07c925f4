"""Data parallel: `mogen align` under 2 CPU processes (gloo) makes the same updates as 1 process, with DDP and FSDP2.

The 2-process run rolls out half of the global batch per process, gathers rewards for the group statistics and
all-reduces gradients; with the same recipe, its LoRA must equal the 1-process run's. Under FSDP2 (the shipped
recipes/accelerate/fsdp.yaml, launched on CPU through tests/fsdp_on_cpu.py) each process holds only shards of the
transformer, so saving, resuming and exporting the LoRA must gather and scatter them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from mogen.cli import app
from mogen.config import LoraConfig, load_recipe
from mogen.lora import attach_lora, load_lora
from mogen.models.tiny import TinyT2I
from mogen.trainer import align

PLUGIN = Path(__file__).parent / "reward_plugin"
FSDP_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp.yaml"
FSDP_LAUNCHER = Path(__file__).parent / "fsdp_on_cpu.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")
REWARDS = [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "vivid"}]


def _recipe(tmp_path: Path, model_dir: Path, run: str, rewards: list[dict], advantage_std: str = "group",
            chunk_size: int | None = None, **algorithm) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\na blue square\n")
    data = {
        "model": {"name": str(model_dir)},
        "lora": {"rank": 4, "alpha": 8},
        "prompts": {"source": "file", "path": str(prompts)},
        "rollout": {"prompts_per_batch": 2, "group_size": 4, "chunk_size": chunk_size},
        "sampler": {"num_steps": 4, "train_window": [0, 2], "train_steps": 2},
        "advantage": {"std": advantage_std},
        "algorithm": {"name": "dppo", "delta": 1e-9, **algorithm},  # a delta that masks: the masks must agree too
        "rewards": rewards,
        "train": {"steps": 1, "sample_every": 1, "checkpoint_every": 1, "log_with": []},
        "output_dir": str(tmp_path / run),
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch_two_processes(recipe: Path) -> Path:
    """`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m mogen align --recipe ...`: a user's CPU launch (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mogen", "align", "--recipe", str(recipe)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_recipe(recipe).output_dir


def _launch_fsdp(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2` on CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    command = [str(ACCELERATE), "launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2", str(FSDP_LAUNCHER),
               "align", "--recipe", str(recipe), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _assert_same_run(two: Path, one: Path, steps: int = 1, rtol: float = 1e-3, atol: float = 1e-5) -> None:
    lora_two = load_file(str(Path(two) / "lora" / "adapter.safetensors"))
    lora_one = load_file(str(Path(one) / "lora" / "adapter.safetensors"))
    assert lora_two.keys() == lora_one.keys()
    assert any((v != 0).any() for k, v in lora_one.items() if "lora_B" in k)  # the step did update
    for key in lora_one:  # Adam steps are ~lr = 3e-4 per element: 1e-5 is a few % of one step (float summation order)
        torch.testing.assert_close(lora_two[key], lora_one[key], rtol=rtol, atol=atol)
    metrics_two = [json.loads(line) for line in (Path(two) / "metrics.jsonl").read_text().splitlines()]
    metrics_one = [json.loads(line) for line in (Path(one) / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics_two] == [m["step"] for m in metrics_one] == list(range(1, steps + 1))
    for m_two, m_one in zip(metrics_two, metrics_one):
        for key in ("reward/total", "reward/failed_fraction", "kl/ref", "kl/old_new", "mask_fraction", "update/grad_norm"):
            assert m_two[key] == pytest.approx(m_one[key], rel=1e-4, abs=1e-9), key
    assert (Path(two) / "samples" / f"step-{steps}.png").is_file() and (Path(two) / "checkpoints" / f"step-{steps}").is_dir()


@pytest.mark.parametrize(("advantage_std", "chunk_size"), [("group", None), ("batch", 3)])
def test_two_processes_make_the_same_update_as_one(tmp_path: Path, tiny_model_dir: Path, advantage_std: str, chunk_size: int | None) -> None:
    """With `advantage.std: batch` the std is the whole batch's (rewards are gathered first), not a process's half.
    With `rollout.chunk_size: 3` each process samples its 4 samples as chunks of 3 and 1, scored on a background
    thread while the next chunk samples, and gathers the rewards in sample order as without chunks."""
    two = _launch_two_processes(_recipe(tmp_path, tiny_model_dir, "two", REWARDS, advantage_std, chunk_size))
    one = align(load_recipe(_recipe(tmp_path, tiny_model_dir, "one", REWARDS, advantage_std)))
    _assert_same_run(two, one)


def test_a_process_whose_groups_all_failed_still_joins_the_update(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process holds one prompt group; the 'red' group fails its reward, so one process has no sample to
    train on in any minibatch. It must still take part in the all-reduce (with weight 0), and the update must
    equal the 1-process one, over 2 minibatches and 2 passes."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    rewards = [{"name": "fails_on_word", "kwargs": {"word": "red"}}]
    two = _launch_two_processes(_recipe(tmp_path, tiny_model_dir, "two", rewards, minibatches=2, updates_per_batch=2))
    with pytest.warns(UserWarning, match="dropping 4 samples"):
        one = align(load_recipe(_recipe(tmp_path, tiny_model_dir, "one", rewards, minibatches=2, updates_per_batch=2)))
    _assert_same_run(two, one)


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_nft_and_awm_in_two_processes_make_the_same_update_as_one(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """The forward-process update (mogen/forward_update.py) under DDP: training times and noise drawn for the global
    batch, NFT's rollout with the old adapter, AWM's ell_old pre-pass, and a process without samples (its group
    failed) joining every forward with a stand-in, over 2 minibatches and 2 passes; the old adapters agree too."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    rewards = [{"name": "fails_on_word", "kwargs": {"word": "red"}}]
    knobs = {"name": algorithm, "minibatches": 2, "updates_per_batch": 2, "beta": 0.01, "awm": {"include_init": True}}
    two = _launch_two_processes(_recipe(tmp_path, tiny_model_dir, "two", rewards, **knobs))
    with pytest.warns(UserWarning, match="dropping 4 samples"):
        one = align(load_recipe(_recipe(tmp_path, tiny_model_dir, "one", rewards, **knobs)))
    for name in ("lora.safetensors", "old_lora.safetensors"):
        weights_two, weights_one = (load_file(str(Path(run) / "checkpoints" / "step-1" / name)) for run in (two, one))
        assert weights_two.keys() == weights_one.keys()
        for key in weights_one:
            torch.testing.assert_close(weights_two[key], weights_one[key], rtol=1e-3, atol=1e-5)
    (metrics_two,), (metrics_one,) = ([json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
                                      for run in (two, one))
    for key in ("reward/total", "kl/ref", "kl/old_new", "update/grad_norm", "update/ref_penalty"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=1e-4, abs=1e-9), key
    # AWM's loss is a mean of -a rho terms of size ~0.1-1 that cancel to ~1e-7: float32 rounding of those terms (other
    # thread counts, other reduction orders) moves it by ~1e-7, so it is compared at the terms' precision
    assert metrics_two["update/loss"] == pytest.approx(metrics_one["update/loss"], rel=1e-4, abs=1e-5)


def test_shards_are_contiguous_equal_slices_and_an_uneven_batch_is_a_clear_error() -> None:
    from mogen.config import ConfigError
    from mogen.distributed import shard_of

    assert [shard_of(8, 2, i) for i in range(2)] == [slice(0, 4), slice(4, 8)]
    assert shard_of(8, 1, 0) == slice(0, 8)
    with pytest.raises(ConfigError, match=r"rollout.prompts_per_batch x rollout.group_size = 8 .* multiple of 3"):
        shard_of(8, 3, 0)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Two steps of one recipe under FSDP2 with 2 processes ("fsdp") and in 1 process ("one")."""
    tmp = tmp_path_factory.mktemp("fsdp")
    recipe = _recipe(tmp, tiny_model_dir, "fsdp", REWARDS)
    result = _launch_fsdp(recipe, "--set", "train.steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # accelerate really sharded the transformer: every parameter is a DTensor shard
        shards, total = re.search(rf"rank {rank}: (\d+) of (\d+) transformer parameters are DTensor shards", result.stdout).groups()
        assert int(total) > 0 and shards == total
    one = align(load_recipe(_recipe(tmp, tiny_model_dir, "one", REWARDS), ["train.steps=2"]))
    return {"recipe": recipe, "fsdp": Path(load_recipe(recipe).output_dir), "one": Path(one)}


def test_fsdp2_two_processes_make_the_same_updates_as_one(fsdp_runs: dict[str, Path]) -> None:
    """Two steps, so the second update starts from LoRA weights and Adam moments that live as shards."""
    _assert_same_run(fsdp_runs["fsdp"], fsdp_runs["one"], steps=2)
    optim_fsdp = torch.load(fsdp_runs["fsdp"] / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    optim_one = torch.load(fsdp_runs["one"] / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    assert optim_fsdp["state"].keys() == optim_one["state"].keys()  # gathered: full tensors under parameter names
    for name, state in optim_one["state"].items():
        assert optim_fsdp["state"][name]["step"] == state["step"] == 2
        torch.testing.assert_close(optim_fsdp["state"][name]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize(("source", "rtol", "atol"), [("fsdp", 1e-6, 1e-9), ("one", 1e-3, 1e-5)])
def test_fsdp2_resume_continues_the_run(fsdp_runs: dict[str, Path], tmp_path: Path, source: str, rtol: float, atol: float) -> None:
    """A run as it was after step 1, resumed under FSDP for step 2, ends where the straight run did: the LoRA goes
    back into the model before sharding and the optimizer state is scattered into the shards. The checkpoint may
    come from the FSDP run itself or from the 1-process run (the files do not depend on the engine)."""
    straight = fsdp_runs[source]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("step-2", "step-2.png", "lora"))
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step-1"]
    result = _launch_fsdp(fsdp_runs["recipe"], "--resume", "--set", "train.steps=2", "--set", f"output_dir={resumed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "(step 1)" in result.stdout
    _assert_same_run(resumed, straight, steps=2, rtol=rtol, atol=atol)  # without the optimizer state step 2 moves ~1e-4
    optim_straight = torch.load(straight / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    optim_resumed = torch.load(resumed / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    for name, state in optim_straight["state"].items():
        torch.testing.assert_close(optim_resumed["state"][name]["exp_avg_sq"], state["exp_avg_sq"], rtol=rtol, atol=atol**2)


def test_fsdp2_run_exports_a_lora_that_diffusers_loads(fsdp_runs: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    """`mogen export` of the FSDP run, loaded by diffusers, gives the 1-process run's adapted velocity."""
    result = CliRunner().invoke(app, ["export", "--run", str(fsdp_runs["fsdp"]), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model = TinyT2I.from_pretrained(tiny_model_dir)
    cond = model.encode_prompts(["two red circles", "a blue square"])
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        base = model.velocity(x, t, cond)
    attach_lora(model.transformer, LoraConfig(rank=4, alpha=8))
    load_lora(model.transformer, fsdp_runs["one"] / "lora" / "adapter.safetensors")
    with torch.no_grad():
        expected = model.velocity(x, t, cond)
    model.transformer = SD3Transformer2DModel.from_pretrained(tiny_model_dir / "transformer")
    model.transformer.load_lora_adapter(tmp_path / "out", prefix="transformer", use_safetensors=True)
    with torch.no_grad():
        exported = model.velocity(x, t, cond)
    assert (expected - base).abs().max() > 1e-4  # two steps did move the output
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-6)

