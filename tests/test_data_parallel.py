"""Data parallel: `mogen align` under 2 CPU processes (torchrun, gloo) makes the same update as 1 process.

The 2-process run rolls out half of the global batch per process, gathers rewards for the group statistics and
all-reduces gradients; with the same recipe, its LoRA after one step must equal the 1-process run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mogen.config import load_recipe
from mogen.trainer import align

PLUGIN = Path(__file__).parent / "reward_plugin"


def _recipe(tmp_path: Path, model_dir: Path, name: str, rewards: list[dict], **algorithm) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles\na blue square\n")
    data = {
        "model": {"name": str(model_dir)},
        "lora": {"rank": 4, "alpha": 8},
        "prompts": {"source": "file", "path": str(prompts)},
        "rollout": {"prompts_per_batch": 2, "group_size": 4},
        "sampler": {"num_steps": 4, "train_window": [0, 2], "train_steps": 2},
        "algorithm": {"name": "dppo", "delta": 1e-9, **algorithm},  # a delta that masks: the masks must agree too
        "rewards": rewards,
        "train": {"steps": 1, "sample_every": 1, "checkpoint_every": 1, "log_with": []},
        "output_dir": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
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


def _assert_same_run(two: Path, one: Path) -> None:
    lora_two = load_file(str(Path(two) / "lora" / "adapter.safetensors"))
    lora_one = load_file(str(Path(one) / "lora" / "adapter.safetensors"))
    assert lora_two.keys() == lora_one.keys()
    assert any((v != 0).any() for k, v in lora_one.items() if "lora_B" in k)  # the step did update
    for key in lora_one:  # Adam steps are ~lr = 3e-4 per element: 1e-5 is a few % of one step (float summation order)
        torch.testing.assert_close(lora_two[key], lora_one[key], rtol=1e-3, atol=1e-5)
    (m_two,) = [json.loads(line) for line in (Path(two) / "metrics.jsonl").read_text().splitlines()]
    (m_one,) = [json.loads(line) for line in (Path(one) / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward/total", "reward/failed_fraction", "kl/ref", "kl/old_new", "mask_fraction"):
        assert m_two[key] == pytest.approx(m_one[key], rel=1e-4, abs=1e-9), key
    assert (Path(two) / "samples" / "step-1.png").is_file() and (Path(two) / "checkpoints" / "step-1").is_dir()


def test_two_processes_make_the_same_update_as_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    rewards = [{"name": "toy_verifier", "kwargs": {"attribute": "count"}}, {"name": "vivid"}]
    two = _launch_two_processes(_recipe(tmp_path, tiny_model_dir, "two", rewards))
    one = align(load_recipe(_recipe(tmp_path, tiny_model_dir, "one", rewards)))
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


def test_shards_are_contiguous_equal_slices_and_an_uneven_batch_is_a_clear_error() -> None:
    from mogen.config import ConfigError
    from mogen.distributed import shard_of

    assert [shard_of(8, 2, i) for i in range(2)] == [slice(0, 4), slice(4, 8)]
    assert shard_of(8, 1, 0) == slice(0, 8)
    with pytest.raises(ConfigError, match=r"rollout.prompts_per_batch x rollout.group_size = 8 .* multiple of 3"):
        shard_of(8, 3, 0)
