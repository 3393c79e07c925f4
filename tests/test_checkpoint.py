"""Checkpoints are written beside their final name and renamed: a half-written one is never picked up."""

from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

from mogen.checkpoint import list_checkpoints, load_checkpoint_lora, load_checkpoint_optimizer, save_checkpoint
from mogen.config import LoraConfig
from mogen.lora import attach_lora, lora_state_dict


def _model() -> tuple[SD3Transformer2DModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=4, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=4)
    params = attach_lora(transformer, LoraConfig(rank=2, alpha=4, init="default"))
    return transformer, torch.optim.AdamW(params, lr=1e-3)


def test_interrupted_write_is_ignored_and_latest_complete_checkpoint_loads(tmp_path: Path) -> None:
    transformer, optimizer = _model()
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    save_checkpoint(tmp_path, 2, transformer, optimizer, keep=2)
    saved = lora_state_dict(transformer)
    # a crash while writing step 4: the temporary folder holds a partial file, no final folder exists
    partial = tmp_path / "checkpoints" / ".tmp-step-4-12345"
    partial.mkdir()
    (partial / "lora.safetensors").write_bytes(b"\x00" * 10)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2"]

    fresh, fresh_optimizer = _model()
    load_checkpoint_lora(list_checkpoints(tmp_path)[-1], fresh)
    assert load_checkpoint_optimizer(list_checkpoints(tmp_path)[-1], fresh, fresh_optimizer) == 2
    assert all(torch.equal(saved[k], v) for k, v in lora_state_dict(fresh).items())
    for restored, original in zip(fresh_optimizer.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert restored["step"] == 1 and torch.equal(restored["exp_avg_sq"], original["exp_avg_sq"])


def test_an_optimizer_that_never_stepped_resumes_without_state(tmp_path: Path) -> None:
    """A checkpoint before any update (every group's reward failed) holds no optimizer state, and resuming from it
    must not invent one: Adam's first real step would then be its second (another bias correction)."""
    transformer, optimizer = _model()
    save_checkpoint(tmp_path, 1, transformer, optimizer, keep=1)
    fresh, fresh_optimizer = _model()
    assert load_checkpoint_optimizer(list_checkpoints(tmp_path)[-1], fresh, fresh_optimizer) == 1
    assert fresh_optimizer.state_dict()["state"] == {}


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    transformer, optimizer = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, transformer, optimizer, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-3"]


def test_a_checkpoint_written_before_fsdp_support_still_resumes(tmp_path: Path) -> None:
    """Earlier checkpoints hold optimizer.state_dict() (parameters numbered, not named): they load as they are."""
    transformer, optimizer = _model()
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    save_checkpoint(tmp_path, 1, transformer, optimizer, keep=1)
    (path,) = list_checkpoints(tmp_path)
    torch.save(optimizer.state_dict(), path / "optimizer.pt")  # the earlier format
    fresh, fresh_optimizer = _model()
    assert load_checkpoint_optimizer(path, fresh, fresh_optimizer) == 1
    for restored, original in zip(fresh_optimizer.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert torch.equal(restored["exp_avg"], original["exp_avg"])
