"""Seconds per probe of the shipped eval suites, one CPU thread: what `eval.every` costs during training.

Runs on the shipped tiny model (builtin:tiny) when its weights are installed, else on a freshly initialised
tiny model of the default size (recorded in the JSON as "model"). Each suite is run once to warm up, then
timed probe by probe (as the aligned model: LoRA rank 32 attached, so the KL probe does its extra forward).

    python -m benchmarks.eval_probes       # writes benchmarks/results/eval_probes.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mogen.config import LoraConfig, ModelConfig
from mogen.evaluation.probes import run_suite
from mogen.evaluation.suite import load_suite
from mogen.evaluation.suite import Suite
from mogen.lora import attach_lora
from mogen.models import TinyConfig, TinyT2I, builtin_tiny_path
from mogen.models.loading import load_policy

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "eval_probes.json"
SUITES = ("toy_quick", "toy_forgetting")


def main() -> None:
    torch.set_num_threads(1)
    if (builtin_tiny_path() / "model_index.json").is_file():
        policy, model = load_policy(ModelConfig(), device="cpu"), "builtin:tiny"
    else:
        torch.manual_seed(0)
        policy, model = TinyT2I.from_config(TinyConfig(), tempfile.mkdtemp()).eval(), "random TinyConfig() (no shipped weights)"
    attach_lora(policy.transformer, LoraConfig(rank=32, alpha=64))
    results = {"model": model, "torch": torch.__version__, "platform": platform.platform(), "threads": 1, "suites": {}}
    for name in SUITES:
        suite = load_suite(ROOT / "recipes" / "eval" / f"{name}.yaml")
        run_suite(policy, suite, with_grids=False)  # warm-up: scorer loading, first-call overheads
        per_probe = {}
        for probe in suite.probes:
            single = Suite.model_validate({**suite.model_dump(), "probes": [probe.model_dump()]})
            started = time.perf_counter()
            result = run_suite(policy, single, with_grids=False)
            per_probe[probe.name] = {
                "seconds": round(time.perf_counter() - started, 3),
                "samples": len(result.metrics[next(iter(result.metrics))].values) if result.metrics else 0,
                "skipped": result.notes,
            }
        results["suites"][name] = {"total_seconds": round(sum(p["seconds"] for p in per_probe.values()), 2), "probes": per_probe}
        print(name, json.dumps(results["suites"][name], indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
