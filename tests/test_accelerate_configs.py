"""The accelerate configs under recipes/accelerate/: each loads through accelerate's own loader and launcher.

No GPU exists here, so the GPU configs (one GPU, DDP on one or several machines) are checked as far as
accelerate itself goes without one: the file parses into a ClusterConfig, every key is one the installed
`accelerate launch` knows, and the launcher turns it into the environment the training processes would
receive. The CPU config is launched for real: two processes all-reduce a tensor over gloo, and `-m mogen`
runs under it. (FSDP and DeepSpeed are refused by `mogen align` for now: see mogen.distributed.check_launch.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DistributedType,
)
from accelerate.utils.launch import (
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")
EXPECTED = {  # file -> (engine, processes): what each config is documented to select
    "single_gpu.yaml": (DistributedType.NO, 1),
    "ddp_bf16.yaml": (DistributedType.MULTI_GPU, 8),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2),
}


def launcher_env(config: Path) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file CONFIG -m mogen align ...` hands its processes: (args, environment)."""
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "mogen", "align", "--recipe", "r.yaml"])
    args, _, _ = _validate_launch_command(args)
    if args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        cmd, env = prepare_simple_launcher_cmd_env(args)
        assert cmd[1:4] == ["-m", "mogen", "align"]
    return args, env


def test_every_shipped_config_is_covered() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate_and_documents_its_launch(name: str) -> None:
    path = CONFIGS / name
    config = load_config_from_file(str(path))
    engine, processes = EXPECTED[name]
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == engine
    assert config.num_processes == processes
    assert config.mixed_precision == ("no" if name == "cpu_2proc.yaml" else "bf16")
    assert config.num_processes % config.num_machines == 0

    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = [line for line in header if "-m mogen align --recipe recipes/" in line]
    assert any(f"accelerate launch --config_file recipes/accelerate/{name}" in line for line in launch), f"{name}: no launch command"
    for line in launch:  # the recipe named in the example command exists
        recipe = line.split("--recipe ")[1].split()[0]
        assert (ROOT / recipe).is_file(), f"{name}: example recipe {recipe} does not exist"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_builds_the_process_environment(name: str) -> None:
    args, env = launcher_env(CONFIGS / name)
    engine, processes = EXPECTED[name]
    assert int(args.num_processes) == processes
    if name == "multi_node.yaml":
        assert args.num_machines == 2 and args.main_process_ip and args.main_process_port


@pytest.mark.slow
def test_cpu_config_runs_two_gloo_processes(tmp_path: Path) -> None:
    """ACCELERATE_USE_CPU=1 accelerate launch --config_file cpu_2proc.yaml: 2 processes that all-reduce over gloo."""
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import torch\n"
        "from accelerate import Accelerator\n"
        "acc = Accelerator()\n"
        "total = acc.reduce(torch.tensor([acc.process_index + 1.0], device=acc.device), reduction='sum')\n"
        "print(f'rank {acc.process_index}/{acc.num_processes} {acc.distributed_type.value} {acc.state.backend} sum {total.item()}')\n"
        "acc.end_training()  # destroys the process group: without it a gloo process may abort at exit\n"
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), str(script)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = sorted(re.findall(r"rank \d/\d \S+ \S+ sum [\d.]+", result.stdout))  # the two processes' prints may interleave
    assert lines == ["rank 0/2 MULTI_CPU gloo sum 3.0", "rank 1/2 MULTI_CPU gloo sum 3.0"]


@pytest.mark.slow
def test_cpu_config_launches_mogen_as_a_module(tmp_path: Path) -> None:
    """`accelerate launch ... -m mogen align --dry-run`: the documented command reaches mogen's CLI in each process."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), "-m", "mogen", "align",
         "--recipe", str(ROOT / "recipes" / "quickstart.yaml"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("family: tiny") == 2  # each of the 2 processes printed the resolved recipe
