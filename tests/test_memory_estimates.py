"""benchmarks/memory_estimates.py: exact parameter counts of the published SD3.5/FLUX.1 configs (real classes on the
meta device), the exact LoRA size, and the measured activation model behind the GPU memory estimates."""

from __future__ import annotations

import pytest

GIB = 2**30


@pytest.fixture(scope="module")
def me():
    """The benchmark module (ours, not fairscale's top-level `benchmarks`: the repository root is first on the path)."""
    from benchmarks import memory_estimates

    return memory_estimates


@pytest.fixture(scope="module")
def counts(me):
    return me.count_parameters()


@pytest.fixture(scope="module")
def coefficients(me):
    return {family: me.activation_coefficients(family) for family in ("sd3", "flux")}


def test_parameter_counts_match_the_published_totals(me, counts) -> None:
    found = {
        "sd35_medium.transformer": counts["sd35_medium"]["transformer"],
        "sd35_large.transformer": counts["sd35_large"]["transformer"],
        "flux1_dev.transformer": counts["flux1_dev"]["transformer"],
        "t5_xxl_encoder": counts["encoders"]["t5_xxl_encoder"],
    }
    for name, published in me.PUBLISHED_TOTALS.items():
        assert found[name] == pytest.approx(published, rel=0.02), name


def test_lora_count_is_rank_times_fan_in_plus_fan_out_of_each_target(me, counts) -> None:
    """Independent arithmetic: every targeted projection is hidden -> hidden, so each adds r * 2 * hidden.

    SD3.5 joint blocks have 8 targets, the dual-attention ones 4 more (attn2), the last block (context_pre_only)
    has no to_add_out; FLUX.1's double blocks have 8, its single blocks to_q/to_k/to_v only."""
    r = 32
    medium, large, flux = me.SD35_MEDIUM, me.SD35_LARGE, me.FLUX1_DEV
    modules = {
        "sd35_medium": 8 * (medium["num_layers"] - 1) + 7 + 4 * len(medium["dual_attention_layers"]),
        "sd35_large": 8 * (large["num_layers"] - 1) + 7,
        "flux1_dev": 8 * flux["num_layers"] + 3 * flux["num_single_layers"],
    }
    for spec in me.MODELS:
        assert counts[spec.name]["lora"] == modules[spec.name] * r * 2 * me.hidden_size(spec), spec.name


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_saved_activations_are_linear_in_tokens(coefficients, family: str) -> None:
    """The fit on two token mixes predicts a third within 5%: no tokens x tokens attention matrix is kept."""
    kinds = {"sd3": {"joint_dual", "joint", "joint_last", "other"}, "flux": {"double", "single", "other"}}[family]
    assert set(coefficients[family]) == kinds
    for kind, c in coefficients[family].items():
        assert c["check_relative_error"] < 0.05, kind
        if kind != "other":  # a block keeps tens of bytes per token per hidden unit (bf16 inputs of its ops)
            assert 10 < c["a_image"] < 100 and 10 < c["b_text"] < 100, (kind, c)


def test_estimates_behave(me, counts, coefficients) -> None:
    for spec in me.MODELS:
        small = me.activations_per_sample(spec, coefficients[spec.family], 512)
        large = me.activations_per_sample(spec, coefficients[spec.family], 1024)
        assert small["checkpointed"] < small["full"] / 4  # checkpointing keeps block inputs only
        assert 3 < large["full"] / small["full"] < 4.1  # image tokens x4, text tokens fixed
    rows = me.estimate(counts, coefficients)
    fits = {me.row_key(r): r["max_micro_batch"] for r in rows}
    for (model, res, card, engine, offload, ckpt), n in fits.items():
        if card == 24:
            assert fits[(model, res, 80, engine, offload, ckpt)] >= n  # a bigger card never fits fewer
        if not ckpt:
            assert fits[(model, res, card, engine, offload, True)] >= n  # neither does checkpointing
    # FLUX.1's bf16 weights (~22 GiB) plus the context allowance exceed a 24 GB card unless sharded
    assert 2 * counts["flux1_dev"]["transformer"] > 22 * GIB
    assert fits[("flux1_dev", 512, 24, "ddp", True, True)] == 0
    assert fits[("flux1_dev", 512, 24, "fsdp_x8", True, True)] > 0
