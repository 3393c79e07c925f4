"""The accelerate configs under recipes/accelerate/: each loads through accelerate's own loader and launcher.

No GPU exists here, so the GPU configs (one GPU, DDP on one or several machines, FSDP2) are checked as far as
accelerate itself goes without one: the file parses into a ClusterConfig, every key is one the installed
`accelerate launch` knows (accelerate copies unknown fsdp_config keys without complaint), the launcher turns it
into the environment the training processes would receive, and for FSDP the plugin built from that environment
wraps exactly the transformer blocks of the real diffusers SD3 and FLUX classes. The CPU config is launched for
real: two processes all-reduce a tensor over gloo, and `-m mogen` runs under it. fsdp.yaml itself trains on CPU
processes in tests/test_data_parallel.py. (DeepSpeed is refused by `mogen align`: see mogen.distributed.check_launch.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import (
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from mogen.config import LoraConfig
from mogen.lora import attach_lora

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")
EXPECTED = {  # file -> (engine, processes): what each config is documented to select
    "single_gpu.yaml": (DistributedType.NO, 1),
    "ddp_bf16.yaml": (DistributedType.MULTI_GPU, 8),
    "fsdp.yaml": (DistributedType.FSDP, 8),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2),
}


def launcher_env(config: Path) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file CONFIG -m mogen align ...` hands its processes: (args, environment)."""
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "mogen", "align", "--recipe", "r.yaml"])
    args, _, _ = _validate_launch_command(args)
    if args.multi_gpu or args.use_fsdp:
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
def test_nested_keys_are_launch_arguments(name: str) -> None:
    """accelerate copies fsdp_config keys onto its launch args without checking them: a typo would be dropped
    silently, so every key must name an argument of the installed `accelerate launch`."""
    known = {action.dest for action in launch_command_parser()._actions}
    nested = list(yaml.safe_load((CONFIGS / name).read_text()).get("fsdp_config", {}))
    assert not [key for key in nested if key not in known]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_builds_the_process_environment(name: str) -> None:
    args, env = launcher_env(CONFIGS / name)
    engine, processes = EXPECTED[name]
    assert int(args.num_processes) == processes
    if engine == DistributedType.FSDP:
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"  # FSDP1 is refused by mogen align
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # the model's _no_split_modules decide (SD3 and FLUX alike)
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # true would load the text encoders empty on ranks > 0
        assert env["FSDP_OFFLOAD_PARAMS"] == "false"
    if name == "multi_node.yaml":
        assert args.num_machines == 2 and args.main_process_ip and args.main_process_port


def _tiny_sd3() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
    )


def _tiny_flux() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )


@pytest.mark.parametrize(("build", "blocks"), [(_tiny_sd3, 3), (_tiny_flux, 5)], ids=["sd3", "flux"])
def test_fsdp_plugin_wraps_each_transformer_block(build, blocks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin accelerate builds from fsdp.yaml's launch environment makes one FSDP unit per diffusers block."""
    _, env = launcher_env(CONFIGS / "fsdp.yaml")
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    model = build()
    attach_lora(model, LoraConfig(rank=4, alpha=8))  # as the trainer prepares it: LoRA attached first
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    assert len(wrapped) == blocks
    assert set(wrapped) == set(model._no_split_modules)


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
