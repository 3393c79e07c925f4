"""Shared fixtures: a small randomly initialised tiny model saved to disk, loaded through the user's path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mogen.models.tiny import TinyConfig, TinyT2I

# Small enough that a training step takes well under a second on 2 CPU cores.
SMALL_TINY = TinyConfig(num_layers=2, num_heads=2, head_dim=16, text_hidden=32, text_layers=1, num_merges=512, vae_channels=(8, 8, 16))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small TinyT2I folder (model_index.json + subfolders) as `TinyT2I.save_pretrained` writes it."""
    torch.manual_seed(0)
    model = TinyT2I.from_config(SMALL_TINY, tmp_path_factory.mktemp("tokenizer"))
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")
