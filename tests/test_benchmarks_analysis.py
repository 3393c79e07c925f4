"""The small analysis functions of benchmarks/ (steps to reach a reward, smoothing) on synthetic curves."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quickstart_runs import first_reach, trailing_mean  # noqa: E402


def test_trailing_mean_is_the_mean_of_the_last_window_values_and_undefined_before():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    smoothed = trailing_mean(values, 3)
    assert np.isnan(smoothed[:2]).all()
    np.testing.assert_allclose(smoothed[2:], [2.0, 3.0, 17.0 / 3])


def test_first_reach_on_a_noisy_rising_curve_waits_for_the_smoothed_value():
    steps = np.arange(1, 101)
    rng = np.random.default_rng(0)
    curve = 0.01 * steps + rng.normal(0, 0.1, size=100)  # the level crosses 0.6 at step 60
    smoothed = trailing_mean(curve, 20)  # its level crosses 0.6 at step 69.5 (it lags by (window - 1) / 2)
    reached = first_reach(steps, smoothed, 0.6)
    raw = first_reach(steps, curve, 0.6)
    assert raw < 55  # one lucky step reaches the target before the level does
    assert 65 <= reached <= 75  # the smoothed curve reaches it where its level does, +- its noise (~2 steps)
    assert first_reach(steps, smoothed, 5.0) is None


def test_first_reach_counts_equality_and_ignores_undefined_values():
    steps = np.array([10, 20, 30])
    assert first_reach(steps, np.array([np.nan, 1.0, 2.0]), 1.0) == 20
    assert first_reach(steps, np.array([np.nan, np.nan, np.nan]), -1.0) is None


@pytest.mark.parametrize("window", [1, 5])
def test_trailing_mean_of_a_constant_is_the_constant(window):
    np.testing.assert_allclose(trailing_mean(np.full(8, 0.25), window)[window - 1:], 0.25)


def test_training_curves_interpolate_a_diagnostic_logged_on_a_schedule(tmp_path: Path):
    """kl/ref is measured at steps 1, 10, 20, ... (train.diagnostics_every): between them the curve is the line
    through the measurements, so a linear kl/ref gives the same trailing mean as if it were logged every step."""
    import json

    from quickstart_runs import WINDOW, training_curves

    rows = [{"step": 0, "probe/x": 0.5}]
    rows += [{"step": s, "reward/total": 1.0, **({"kl/ref": 1e-4 * s} if s == 1 or s % 10 == 0 else {})} for s in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(tmp_path)
    assert curves["step"].tolist() == list(range(1, 41))
    expected = trailing_mean(1e-4 * np.arange(1, 41), WINDOW)
    np.testing.assert_allclose(curves["kl/ref"][WINDOW - 1:], expected[WINDOW - 1:], rtol=1e-9)
