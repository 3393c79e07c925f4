"""benchmarks/family_parameters.py: the released configs of the 2026 families give the sizes their model cards announce."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "family_parameters.py"


@pytest.fixture(scope="module")
def fp():
    spec = importlib.util.spec_from_file_location("family_parameters", PATH)  # `benchmarks` is shadowed by fairscale's
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_counts_match_the_announced_sizes_and_lora_is_small(fp):
    rows = fp.count()
    for name, row in rows.items():
        assert abs(row["transformer"] / row["announced"] - 1) < 0.1, name  # 1.42B for "Wan2.1 1.3B", 32.2B for "32B"
        assert 0 < row["lora"] < 0.02 * row["transformer"], name  # r32 on the attention projections: 0.1-1.7 %
    assert rows["flux2_dev"]["transformer"] > 8 * rows["flux2_klein_4b"]["transformer"]
