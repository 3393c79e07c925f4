"""LoRA export: what `mogen export` and `export_lora` write loads as is with diffusers' `load_lora_weights`.

Each round trip trains nothing: the adapter gets random non-zero weights (so a wrong key, a wrong alpha/rank
scale or a dropped module would show), then a fresh pipeline from the same folder loads the export and must give
the adapted transformer's output, not the base model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, SD3Transformer2DModel, StableDiffusion3Pipeline
from typer.testing import CliRunner

from family_checks import CPU, PROMPTS, policy_output, randomize_lora
from mogen.cli import app
from mogen.config import LoraConfig, ModelConfig, Recipe, RewardConfig, recipe_to_yaml
from mogen.export import LORA_WEIGHT_NAME, export_lora, export_run
from mogen.lora import attach_lora, save_lora
from mogen.models.flux import FluxPolicy
from mogen.models.sd3 import SD3Policy
from mogen.models.tiny import TinyT2I
from tiny_pipelines import IMAGE_SIZE, save_flux_pipeline, save_sd3_pipeline

LORA = LoraConfig(rank=4, alpha=12)  # alpha / rank = 3: diffusers must not fall back to alpha = rank


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sd3": save_sd3_pipeline(root / "sd3"), "flux": save_flux_pipeline(root / "flux")}


def load_policy(family: str, folder: Path):
    if family == "sd3":
        return SD3Policy.from_pretrained(folder, CPU, max_sequence_length=16)
    return FluxPolicy.from_pretrained(folder, CPU, resolution=IMAGE_SIZE, max_sequence_length=16)


def wrap(family: str, pipeline):
    if family == "sd3":
        return SD3Policy(pipeline, CPU, max_sequence_length=16)
    return FluxPolicy(pipeline, CPU, resolution=IMAGE_SIZE, max_sequence_length=16)


def adapted_policy(family: str, folder: Path):
    policy = load_policy(family, folder)
    attach_lora(policy.transformer, LORA)
    randomize_lora(policy.transformer)
    return policy


def loaded_pipeline_output(family: str, folder: Path, lora_dir: Path | None) -> torch.Tensor:
    """A fresh diffusers pipeline from the model folder, the LoRA loaded the way a user loads one."""
    pipeline_class = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    pipeline = pipeline_class.from_pretrained(folder, local_files_only=True)
    if lora_dir is not None:
        pipeline.load_lora_weights(lora_dir)
    return policy_output(wrap(family, pipeline))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_exported_lora_loads_into_a_fresh_pipeline(family, folders, tmp_path):
    policy = adapted_policy(family, folders[family])
    expected = policy_output(policy)
    path = export_lora(policy.transformer, family, tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_WEIGHT_NAME and path.is_file()
    actual = loaded_pipeline_output(family, folders[family], tmp_path / "lora")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    base = loaded_pipeline_output(family, folders[family], None)
    assert (base - expected).abs().max() > 1e-2


def write_run(run: Path, family: str, model_name: str, transformer: torch.nn.Module, step: int | None = None) -> None:
    """The files `mogen align` leaves in a run directory (config.yaml, lora/ or a checkpoint)."""
    run.mkdir(parents=True)
    recipe = Recipe(model=ModelConfig(name=model_name, family=family), lora=LORA, rewards=[RewardConfig(name="jpeg_compressibility")])
    (run / "config.yaml").write_text(recipe_to_yaml(recipe))
    if step is None:
        (run / "lora").mkdir()
        save_lora(transformer, run / "lora" / "adapter.safetensors")
        (run / "lora" / "adapter_config.json").write_text(json.dumps(LORA.model_dump(mode="json")))
    else:
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
        save_lora(transformer, run / "checkpoints" / f"step-{step}" / "lora.safetensors")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_mogen_export_cli_round_trip(family, folders, tmp_path):
    policy = adapted_policy(family, folders[family])
    expected = policy_output(policy)
    write_run(tmp_path / "run", family, str(folders[family]), policy.transformer)
    result = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "load_lora_weights" in result.output
    actual = loaded_pipeline_output(family, folders[family], tmp_path / "out")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_export_of_a_checkpoint_step(folders, tmp_path):
    policy = adapted_policy("sd3", folders["sd3"])
    expected = policy_output(policy)
    write_run(tmp_path / "run", "sd3", str(folders["sd3"]), policy.transformer, step=5)
    with pytest.raises(FileNotFoundError, match="--step"):
        export_run(tmp_path / "run", tmp_path / "out")
    export_run(tmp_path / "run", tmp_path / "out", step=5)
    torch.testing.assert_close(loaded_pipeline_output("sd3", folders["sd3"], tmp_path / "out"), expected, rtol=1e-5, atol=1e-5)


def test_tiny_model_lora_exports_in_the_sd3_format(tiny_model_dir, tmp_path):
    """The built-in model's transformer is an SD3Transformer2DModel: the export loads through load_lora_adapter."""
    model = TinyT2I.from_pretrained(tiny_model_dir)
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.7, 0.3])
    attach_lora(model.transformer, LORA)
    randomize_lora(model.transformer)
    with torch.no_grad():
        expected = model.velocity(x, t, cond)
    export_lora(model.transformer, "tiny", tmp_path / "lora")
    fresh = SD3Transformer2DModel.from_pretrained(tiny_model_dir / "transformer")
    fresh.load_lora_adapter(tmp_path / "lora", prefix="transformer", use_safetensors=True)
    model.transformer = fresh
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, t, cond), expected, rtol=1e-5, atol=1e-5)


def test_export_errors_are_one_line(folders, tmp_path):
    policy = load_policy("sd3", folders["sd3"])
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_lora(policy.transformer, "sd3", tmp_path / "x")
    attach_lora(policy.transformer, LORA)
    with pytest.raises(ValueError, match="FluxTransformer2DModel, got a SD3Transformer2DModel"):
        export_lora(policy.transformer, "flux", tmp_path / "x")
    runner = CliRunner()
    missing = runner.invoke(app, ["export", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "nowhere: run directory not found" in missing.output
    (tmp_path / "bare").mkdir()
    bare = runner.invoke(app, ["export", "--run", str(tmp_path / "bare"), "--out", str(tmp_path / "out")])
    assert bare.exit_code == 2 and "config.yaml not found" in bare.output
