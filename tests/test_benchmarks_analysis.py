"""The small analysis functions of benchmarks/ (steps to reach a reward, smoothing) on synthetic curves."""

from pathlib import Path

import numpy as np
import pytest

from benchmarks.quickstart_runs import first_reach, trailing_mean


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


# --- benchmarks/matched_regime.py: the matched clip range and the claims' verdicts ---------------------------------
from mogen.trust_region import binding_kl, clip_fraction, matched_eps  # noqa: E402
from benchmarks.matched_regime import (  # noqa: E402
    D_SD35,
    D_TINY,
    EPS_MATCHED,
    REFERENCE_DELTA,
    claims,
    frontier_gap,
    per_setting,
    variants,
    verdict,
)


def test_binding_kl_is_where_half_the_steps_clip_and_matches_the_closed_form_limits():
    assert clip_fraction(binding_kl(1e-4, D_SD35), 1e-4, D_SD35) == pytest.approx(0.5, abs=1e-6)
    assert binding_kl(1e-4, D_SD35) == pytest.approx(1e-4, rel=0.01)  # mean-dominated: binds at KL ~ eps
    assert 1.28e-6 < binding_kl(1e-4, D_TINY) < 4 * 1.28e-6  # spread-dominated: same order as D eps^2 / 2 = 1.28e-6


def test_matched_eps_binds_on_the_tiny_latent_where_1e4_binds_on_sd35():
    eps = matched_eps(1e-4, D_SD35, D_TINY)
    assert eps == pytest.approx(6.0e-4, rel=0.01) and EPS_MATCHED == 6.0e-4
    assert binding_kl(eps, D_TINY) == pytest.approx(binding_kl(1e-4, D_SD35), rel=1e-3)
    assert matched_eps(3e-4, 1000, 1000) == pytest.approx(3e-4, rel=1e-3)  # same latent: same eps


def test_the_clipped_share_of_real_one_sample_log_ratios_is_the_gaussian_ones():
    """Monte Carlo: log r = mean_i(eps_i d_i / std - d_i^2 / (2 std^2)) over D = 256 elements, at the KL where the
    matched eps should clip half of the steps."""
    rng = np.random.default_rng(0)
    kl, std = binding_kl(EPS_MATCHED, D_TINY), 0.5
    d = rng.normal(size=(4000, D_TINY))
    d *= std * np.sqrt(2 * kl / (d**2).mean(axis=1, keepdims=True))  # every step's exact KL is `kl`
    noise = rng.normal(size=d.shape)
    log_r = (noise * d / std - d**2 / (2 * std**2)).mean(axis=1)
    assert np.mean(np.abs(log_r) > EPS_MATCHED) == pytest.approx(0.5, abs=0.03)


def test_verdict_needs_two_standard_errors_either_way():
    assert verdict(0.3, 0.1) == "reproduced"
    assert verdict(-0.3, 0.1) == "not reproduced"
    assert verdict(0.15, 0.1) == "inconclusive"
    assert verdict(0.3, None) == "inconclusive"  # one seed: no spread, no verdict


def _record(gain: float, kl: float, worst: float = 0.0, color: float = 0.0) -> dict:
    return {"trained_mean_gain": gain, "worst_gain": worst, "heldout_color_change": color, "heldout_overall_change": 0.0,
            "kl_base_end": kl, "kl_ref_end": kl, "mask_or_clip_mean": 0.0, "mask_or_clip_max": 0.0}


def _synthetic_runs(dppo_lift: float, noise: float) -> dict:
    """Every setting of the plan with 3 seeds: gain = 10 x KL on both frontiers, DPPO's lifted by `dppo_lift`;
    seeds spread by +-noise. Under stress DPPO loses 0.01, GRPO 0.05; the budget lifts the worst objective by 0.2."""
    plan = variants()
    kls = {"dppo": [0.01, 0.03, 0.05], "grpo": [0.02, 0.04, 0.06]}
    runs = {}
    for name, spec in plan.items():
        for seed, jitter in zip((0, 1, 2), (-noise, 0.0, noise)):
            algorithm = spec["algorithm"]
            if spec["group"] == "frontier":
                values = DPPO_DELTAS_OR_EPS[algorithm]
                kl = kls[algorithm][values.index(spec["value"])]
                gain = 10 * kl + (dppo_lift if algorithm == "dppo" else 0.0) + jitter
                record = _record(gain, kl, worst=gain - 0.1, color=-gain)
            elif spec["group"] == "stress":
                record = _record(0.3 - (0.01 if algorithm == "dppo" else 0.05) + jitter, 0.03)
            else:
                record = _record(0.1, 0.03, worst=(-0.2 if name != "mix_dppo_budget" else 0.0) + jitter)
            runs.setdefault(name, {})[seed] = record
    # the stress tests are paired with the matched frontier settings: give those the stress runs' base level
    for name in (f"dppo_delta{REFERENCE_DELTA:.0e}", f"grpo_eps{EPS_MATCHED:.0e}"):
        for seed, jitter in zip((0, 1, 2), (-noise, 0.0, noise)):
            runs[name][seed]["trained_mean_gain"] = 0.3 + jitter
    return runs


DPPO_DELTAS_OR_EPS = {"dppo": [v["value"] for v in variants().values() if v["group"] == "frontier" and v["algorithm"] == "dppo"],
                      "grpo": [v["value"] for v in variants().values() if v["group"] == "frontier" and v["algorithm"] == "grpo"]}


def test_claims_on_synthetic_runs_where_dppo_wins_everything():
    runs = _synthetic_runs(dppo_lift=0.2, noise=0.01)
    result = claims(runs, per_setting(runs, variants()))
    assert result["stability_lr3x"]["verdict"] == result["stability_updates2"]["verdict"] == "reproduced"
    assert result["stability_lr3x"]["dppo_minus_grpo"] == pytest.approx(0.04)
    assert result["budget_keeps_worst_objective"]["verdict"] == "reproduced"
    assert result["budget_keeps_worst_objective"]["budget_minus_global"] == pytest.approx(0.2)
    assert result["better_worst_objective_at_equal_kl"]["verdict"] == "reproduced"
    assert result["higher_reward_at_equal_kl"]["verdict"] == "reproduced"
    losing = _synthetic_runs(dppo_lift=-0.3, noise=0.01)
    assert claims(losing, per_setting(losing, variants()))["higher_reward_at_equal_kl"]["verdict"] == "not reproduced"


def test_frontiers_compare_over_their_common_kl_range_only():
    def point(kl: float, gain: float, std: float = 0.01) -> dict:
        return {"kl_base_end": {"mean": kl, "std": std, "n": 3}, "trained_mean_gain": {"mean": gain, "std": std, "n": 3}}

    # DPPO: gain 10 KL on [0.01, 0.05]; GRPO: gain 10 KL - 0.1 on [0.03, 0.07]: common range [0.03, 0.05], gap +0.1
    dppo = [point(0.01, 0.1), point(0.05, 0.5)]
    grpo = [point(0.03, 0.2), point(0.07, 0.6)]
    gap = frontier_gap({"dppo": dppo, "grpo": grpo}, "kl_base_end", "trained_mean_gain")
    assert gap["range"] == pytest.approx([0.03, 0.05]) and gap["dppo_minus_grpo"] == pytest.approx(0.1)
    assert gap["verdict"] == "reproduced"
    swapped = frontier_gap({"dppo": grpo, "grpo": dppo}, "kl_base_end", "trained_mean_gain")
    assert swapped["verdict"] == "not reproduced"
    noisy = frontier_gap({"dppo": [point(0.01, 0.1, 0.5), point(0.05, 0.5, 0.5)], "grpo": grpo}, "kl_base_end", "trained_mean_gain")
    assert noisy["verdict"] == "inconclusive"  # 0.1 is within 2 standard errors of seeds spread by 0.5
    apart = frontier_gap({"dppo": dppo, "grpo": [point(0.08, 0.2), point(0.09, 0.3)]}, "kl_base_end", "trained_mean_gain")
    assert apart["verdict"] == "inconclusive" and "share no" in apart["why"]


def test_claims_are_inconclusive_with_missing_runs_or_one_seed():
    runs = {name: {0: seed_runs[0]} for name, seed_runs in _synthetic_runs(0.2, 0.01).items()}
    result = claims(runs, per_setting(runs, variants()))
    assert {c["verdict"] for c in result.values()} == {"inconclusive"}
    assert claims({}, {})["budget_keeps_worst_objective"]["why"] == "missing runs"


def test_training_curves_interpolate_a_diagnostic_logged_on_a_schedule(tmp_path: Path):
    """kl/ref is measured at steps 1, 10, 20, ... (train.diagnostics_every): between them the curve is the line
    through the measurements, so a linear kl/ref gives the same trailing mean as if it were logged every step."""
    import json

    from benchmarks.quickstart_runs import WINDOW, training_curves

    rows = [{"step": 0, "probe/x": 0.5}]
    rows += [{"step": s, "reward/total": 1.0, **({"kl/ref": 1e-4 * s} if s == 1 or s % 10 == 0 else {})} for s in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(tmp_path)
    assert curves["step"].tolist() == list(range(1, 41))
    expected = trailing_mean(1e-4 * np.arange(1, 41), WINDOW)
    np.testing.assert_allclose(curves["kl/ref"][WINDOW - 1:], expected[WINDOW - 1:], rtol=1e-9)


# --- benchmarks/forward_rl.py: NFT/AWM against the DPPO/GRPO frontiers, and reward per CPU-minute ----------------
import json  # noqa: E402

from benchmarks import forward_rl  # noqa: E402
from benchmarks.quickstart_runs import run_cpu_seconds  # noqa: E402


def test_frontier_gap_names_the_two_algorithms_it_compares():
    def point(kl: float, gain: float) -> dict:
        return {"kl_base_end": {"mean": kl, "std": 0.01, "n": 3}, "trained_mean_gain": {"mean": gain, "std": 0.01, "n": 3}}

    gap = frontier_gap({"nft": [point(0.01, 0.3), point(0.05, 0.7)], "dppo": [point(0.01, 0.1), point(0.05, 0.5)]},
                       "kl_base_end", "trained_mean_gain", "nft", "dppo")
    assert gap["nft_minus_dppo"] == pytest.approx(0.2) and gap["verdict"] == "reproduced"


def _forward_table(gain_per_cpu: dict[str, list[float]]) -> dict[str, dict]:
    """Per-setting rows whose gain per CPU-minute has the given per-seed values (frontier points on the committed
    DPPO/GRPO KL range, so that the frontier questions have a common range)."""
    from benchmarks.quickstart_runs import mean_std

    plan = forward_rl.variants()
    table = {}
    for name, spec in plan.items():
        values = gain_per_cpu.get(spec["algorithm"], [0.01, 0.011, 0.012])
        kl = 0.002 if spec["value"] in (1.0, 3e-4) else 0.006
        table[name] = {"algorithm": spec["algorithm"], "value": spec["value"], "seeds": [0, 1, 2],
                       "trained_mean_gain": mean_std([0.1, 0.11, 0.12]), "worst_gain": mean_std([0.0, 0.01, 0.02]),
                       "heldout_color_change": mean_std([-0.01, 0.0, 0.01]), "kl_base_end": mean_std([kl, kl, kl]),
                       "cpu_minutes": mean_std([3.0, 3.1, 3.2]), "gain_per_cpu_minute": mean_std(values)}
    return table


def test_forward_rl_compares_gain_per_cpu_minute_against_dppo_beyond_two_standard_errors():
    result = forward_rl.comparisons(_forward_table({"nft": [0.05, 0.051, 0.052], "awm": [0.0, 0.001, 0.002],
                                                    "dppo": [0.02, 0.021, 0.022], "grpo": [0.02, 0.03, 0.01]}))
    efficiency = result["gain_per_cpu_minute"]
    assert efficiency["nft"]["verdict"] == "reproduced" and efficiency["nft"]["minus_dppo"] == pytest.approx(0.03)
    assert efficiency["awm"]["verdict"] == "not reproduced"
    assert efficiency["grpo"]["verdict"] == "inconclusive"  # -0.0 within 2 SE of its spread
    for pair in ("nft_vs_dppo", "nft_vs_grpo", "awm_vs_dppo", "awm_vs_grpo"):
        assert set(result[pair]) == {"gain_at_equal_kl", "forgetting_at_equal_gain", "worst_objective_at_equal_kl"}
    markdown = forward_rl.table_markdown({"per_setting": _forward_table({}), "comparisons": result})
    assert "| nft_vs_dppo | gain per CPU-minute | reproduced | +0.0300 |" in markdown


def test_forward_rl_without_a_dppo_run_cannot_say_anything_about_efficiency():
    table = {k: v for k, v in _forward_table({}).items() if v["algorithm"] != "dppo"}
    efficiency = forward_rl.comparisons(table)["gain_per_cpu_minute"]
    assert {e["verdict"] for e in efficiency.values()} == {"inconclusive"}


def test_a_run_summary_without_mask_or_kl_keys_has_nan_not_an_error(tmp_path):
    from benchmarks.matched_regime import summarize

    rows = []
    for step in (0, 1, 2):
        row = {"step": step, "reward/total": 1.0 + step, "kl/ref": 1e-4 * step}
        for key in ("count", "shape", "position"):
            row[f"probe/trained/{key}"] = 0.5 + 0.1 * step
        row |= {"probe/heldout/color": 0.8, "probe/heldout/overall": 0.7, "probe/kl_base/kl": 1e-3 * step}
        rows.append(row)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(tmp_path, mixture=False)
    assert summary["trained_mean_gain"] == pytest.approx(0.2)
    assert np.isnan(summary["mask_or_clip_mean"]) and np.isnan(summary["kl_old_new_median"])
    assert run_cpu_seconds(tmp_path) is None
    (tmp_path / "timing.json").write_text(json.dumps({"wall_seconds": 10.0, "cpu_seconds": 9.5}))
    assert run_cpu_seconds(tmp_path) == 9.5
