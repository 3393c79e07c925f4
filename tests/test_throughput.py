"""python -m benchmarks.throughput --smoke: both measurements run end to end at a toy size, the forwards it counts are the
ones the update's math implies, and the results name no path of this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_counts_forwards_and_reports_the_floor(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--smoke", "--scales", "mid", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert str(ROOT) not in text and "/tmp" not in text
    assert out.with_suffix(".png").stat().st_size > 0
    result = json.loads(text)
    mid = result["scales"]["mid"]
    assert mid["model"].startswith("random_sd3.TOY") and mid["batch"] == 4 and mid["steps"] == 2
    b, s, n = mid["batch"], mid["trained_steps"], mid["num_steps"]
    forwards = mid["forwards_per_step_in_samples"]
    assert forwards["floor"] == {"no_grad_samples": n * b, "grad_samples": s * b * mid["updates_per_batch"]}
    assert forwards["replay_style"]["no_grad_samples"] == n * b + s * b  # the old means, recomputed
    assert {"dppo/default", "grpo_clip1e-4/default"} <= set(mid["runs"])
    for name, run in mid["runs"].items():
        # the update's gradient forwards are the floor's exactly; the rollout's no-grad forwards at least the floor's
        assert forwards[name]["grad_samples"] == forwards["floor"]["grad_samples"]
        assert forwards[name]["no_grad_samples"] >= forwards["floor"]["no_grad_samples"]
        assert run["seconds"]["step_s"] > 0 and run["seconds"]["step_over_floor"] > 0
        assert run["train_config"]["steps"] == 2
    # the every-step variant either ran or says which override this mogen rejected
    every = [name for name in mid["runs"] if name.endswith("/every_step")]
    assert len(every) == 2 or "train.diagnostics_every=1" in mid["skipped"]["every_step"]
    for name in every:  # a schedule can only drop diagnostic forwards, never add any
        default = name.replace("/every_step", "/default")
        assert forwards[name]["no_grad_samples"] >= forwards[default]["no_grad_samples"]
    assert mid["floor"]["floor_s"] > 0 and mid["floor"]["floor_cpu_s"] > 0
    assert mid["peak_rss_mib"]["after_trainer_runs"] >= mid["peak_rss_mib"]["after_floor"] > 0
