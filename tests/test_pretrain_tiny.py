"""scripts/pretrain_tiny.py is deterministic from its seed, whether it runs in one go or is resumed.

The shipped builtin:tiny is documented as reproducible with that script (mogen/assets/tiny/README.md): a run
split into the autoencoder stage, a resumed flow stage and a resume in the middle of the flow stage must end
with the same checkpoint, bit for bit, as one uninterrupted run. Sizes are tiny so the test takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from mogen.models import TinyT2I

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny.py"
SMALL = ["--vae-steps", "4", "--vae-batch-size", "4", "--batch-size", "4", "--ckpt-every", "2", "--eval-every", "1000",
         "--eval-per-task", "1"]


def pretrain(work_dir: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--work-dir", str(work_dir), *SMALL, *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_identical(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_resumed_runs_end_with_the_uninterrupted_runs_checkpoint(tmp_path: Path) -> None:
    pretrain(tmp_path / "once", "--steps", "4")
    staged = tmp_path / "staged"
    pretrain(staged, "--steps", "0")                                   # autoencoder only
    pretrain(staged, "--resume", "--steps", "4", "--stop-at", "2")     # half the flow stage
    pretrain(staged, "--resume", "--steps", "4")                       # the rest

    once = torch.load(tmp_path / "once" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(staged / "checkpoint.pt", weights_only=True)
    assert once["flow_step"] == resumed["flow_step"] == 4
    assert_identical(once, resumed)

    model = TinyT2I.from_pretrained(tmp_path / "once" / "export" / "step_000004")  # the export is a loadable model
    images = model.sample(["two red circles"], num_steps=2, seed=0)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
