"""Forgetting evaluation: suites, probes (exact KL to base, diversity, flow-matching loss), bootstrap CIs, the
reward-hacking alarm, `mogen eval` and `mogen report`, on a small random tiny model loaded from disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mogen.cli import app
from mogen.config import ConfigError, LoraConfig
from mogen.evaluation.alarm import HackingAlarm
from mogen.evaluation.probes import MetricValues, run_probes, run_suite
from mogen.evaluation.suite import load_suite
from mogen.evaluation.probes import flow_matching_loss, kl_to_reference, pairwise_distance, sample_images
from mogen.evaluation.report import bootstrap_delta, compare, write_report
from mogen.evaluation.suite import AlarmConfig, ProbeSampler
from mogen.lora import adapter_disabled, attach_lora, save_lora
from mogen.models import TinyConfig, TinyT2I
from mogen.toyworld import render_batch, scene_from_prompt

SMALL = TinyConfig(num_layers=2, num_heads=2, head_dim=16, text_hidden=32, text_layers=1, num_merges=512, vae_channels=(8, 8, 16))
LORA = LoraConfig(rank=4, alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "eval"

SUITE = """
name: test
sampler: {num_steps: 3, images_per_prompt: 2, seed: 7, batch_size: 3}
grid_prompts: 2
probes:
  - name: count
    prompts: {split: heldout, tasks: [count], limit: 3}
    scorers:
      - {name: toy_verifier, label: count, kwargs: {attribute: count}}
      - {name: toy_verifier, label: text, kwargs: {attribute: text}}
      - {name: vivid}
  - name: kl_base
    kind: kl
    prompts: {split: heldout, tasks: [count], limit: 3}
  - name: diversity
    kind: diversity
    prompts: {split: heldout, tasks: [count], limit: 3}
  - name: fm
    kind: flow_matching
    prompts: {split: heldout, tasks: [count], limit: 3}
    t_grid: [0.3, 0.8]
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is ~10x faster than two on a shared 2-core machine (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = TinyT2I.from_config(SMALL, tmp_path_factory.mktemp("tokenizer"))
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def _policy(model_dir: Path) -> TinyT2I:
    policy = TinyT2I.from_pretrained(model_dir)
    if not hasattr(policy, "encode_images"):  # the adapter contract's name for image -> latents
        policy.encode_images = policy.encode
    return policy


def _perturb_lora(policy: TinyT2I, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in policy.transformer.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(SUITE)
    return load_suite(path)


def test_base_vs_base_report_has_zero_deltas(model_dir, suite, tmp_path):
    """A fresh LoRA (B = 0) is the base model: two separate evaluations agree exactly, every delta and CI is 0."""
    policy = _policy(model_dir)
    attach_lora(policy.transformer, LORA)
    base, aligned = run_suite(policy, suite, as_base=True), run_suite(policy, suite)
    assert set(base.metrics) == {"count/count", "count/text", "count/vivid", "kl_base/kl", "diversity/pixel_distance", "fm/fm_loss"}
    rows = compare(base, aligned)
    for key, row in rows.items():
        if key == "count/text":  # no count prompt has a text attribute: not scored, not a 0
            assert math.isnan(row["base"]) and math.isnan(row["delta"])
            continue
        assert row["delta"] == row["ci_low"] == row["ci_high"] == 0.0, key
        assert row["base"] == row["aligned"] and math.isfinite(row["base"]), key
        assert row["verdict"] == "~"
    assert rows["kl_base/kl"]["aligned"] == 0.0 and rows["fm/fm_loss"]["base"] > 0
    logged = run_probes(policy, suite)  # what the trainer logs: the same means, NaN metrics left out
    assert logged == {f"probe/{key}": row["aligned"] for key, row in rows.items() if key != "count/text"}

    report = write_report(tmp_path, suite, base, aligned, {"model": str(model_dir), "lora": None, "device": "cpu"})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"]["count/count"]["delta"] == 0.0 and saved["seeds"]["count"] == 7
    assert {"torch", "diffusers", "peft", "mogen"} <= set(saved["versions"]) and report["suite"] == "test"
    markdown = (tmp_path / "report.md").read_text()
    assert "| count/count |" in markdown and "grids/count.png" in markdown
    grid = Image.open(tmp_path / "grids" / "count.png")
    assert grid.width > 2 * 2 * 32 * 3 and Image.open(tmp_path / "deltas.png").height > 100


def test_kl_to_base_is_exactly_zero_before_training_and_positive_after(model_dir):
    policy = _policy(model_dir)
    attach_lora(policy.transformer, LORA)
    prompts = ["two red circles", "a green square", "the letter X on a blue background"]
    sampler = ProbeSampler(num_steps=4, seed=1)
    base = lambda: adapter_disabled(policy.transformer)  # noqa: E731
    assert torch.equal(kl_to_reference(policy, prompts, sampler, base), torch.zeros(3))
    _perturb_lora(policy)
    kl = kl_to_reference(policy, prompts, sampler, base)
    assert (kl > 0).all() and torch.isfinite(kl).all()
    # the same numbers through the probe runner; the base model run against itself stays exactly 0
    suite = load_suite(RECIPES / "toy_quick.yaml")
    assert run_probes(policy, suite)["probe/kl_base/kl"] > 0
    assert run_suite(policy, suite, as_base=True, with_grids=False).means()["kl_base/kl"] == 0.0


def test_kl_matches_the_closed_form_at_one_step(model_dir):
    """One Flow-SDE step from pure noise: KL = mean_dims ||mean - mean_base||^2 / (2 std^2), the trainer's formula."""
    from mogen.losses import gaussian_kl
    from mogen.sampling import flow_sde_step

    policy = _policy(model_dir)
    attach_lora(policy.transformer, LORA)
    _perturb_lora(policy)
    sampler = ProbeSampler(num_steps=1, seed=5, eta=0.8)
    kl = kl_to_reference(policy, ["a red circle"], sampler, lambda: adapter_disabled(policy.transformer))
    generator = torch.Generator().manual_seed(5)
    x = torch.randn((1, *policy.latent_shape), generator=generator)
    cond = policy.encode_prompts(["a red circle"])
    with torch.no_grad():
        v = policy.velocity(x, torch.ones(1), cond)
        with adapter_disabled(policy.transformer):
            v_base = policy.velocity(x, torch.ones(1), cond)
    a, b = flow_sde_step(v, x, 1.0, 0.0, 0.8), flow_sde_step(v_base, x, 1.0, 0.0, 0.8)
    torch.testing.assert_close(kl, gaussian_kl(a.mean, b.mean, a.std), rtol=1e-6, atol=0)


def test_samples_do_not_depend_on_batch_size(model_dir):
    policy = _policy(model_dir)
    prompts = ["two red circles", "a green square", "a blue triangle"] * 2
    a = sample_images(policy, prompts, ProbeSampler(num_steps=3, seed=2, batch_size=6))
    b = sample_images(policy, prompts, ProbeSampler(num_steps=3, seed=2, batch_size=4))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.allclose(a, sample_images(policy, prompts, ProbeSampler(num_steps=3, seed=3)))


def test_flow_matching_loss_is_the_velocity_regression_error(model_dir):
    policy = _policy(model_dir)
    prompts = ["three red triangles", "a blue circle"]
    sampler = ProbeSampler(seed=4)
    loss = flow_matching_loss(policy, prompts, sampler, [0.25], policy.encode_images)
    rng = np.random.default_rng(4)
    x0 = policy.encode_images(render_batch([scene_from_prompt(p, rng, 32) for p in prompts]))
    eps = torch.randn((1, 2, *policy.latent_shape), generator=torch.Generator().manual_seed(4))[0]
    with torch.no_grad():
        v = policy.velocity(0.75 * x0 + 0.25 * eps, torch.full((2,), 0.25), policy.encode_prompts(prompts))
    torch.testing.assert_close(loss, ((v - (eps - x0)) ** 2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_flow_matching_probe_is_skipped_with_a_note_without_encode_images(model_dir, suite):
    tiny = TinyT2I.from_pretrained(model_dir)

    class WithoutEncoder:  # an adapter that implements FlowPolicy but cannot map images to latents
        transformer, latent_shape = tiny.transformer, tiny.latent_shape
        encode_prompts, velocity, decode = tiny.encode_prompts, tiny.velocity, tiny.decode

    result = run_suite(WithoutEncoder(), suite, with_grids=False)
    assert "fm/fm_loss" not in result.metrics and any("encode_images" in note for note in result.notes)


def test_diversity_is_zero_for_identical_images_and_positive_otherwise():
    image = torch.rand(1, 3, 8, 8)
    assert pairwise_distance(image.repeat(4, 1, 1, 1)) == 0.0
    pair = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert pairwise_distance(pair) == pytest.approx(1.0)  # RMS pixel difference of black vs white
    assert pairwise_distance(torch.rand(4, 3, 8, 8)) > 0


def test_bootstrap_ci_covers_the_true_delta_and_is_deterministic():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    difficulty = rng.normal(size=60)[groups]
    base = MetricValues(difficulty + rng.normal(0, 0.5, size=240), groups, True)
    aligned = MetricValues(difficulty + 0.3 + rng.normal(0, 0.5, size=240), groups, True)
    first = bootstrap_delta(base, aligned, seed=1)
    assert first["ci_low"] < 0.3 < first["ci_high"] and first["ci_low"] > 0  # covers the truth, excludes 0
    assert first["num_prompts"] == 60 and first["ci_low"] < first["delta"] < first["ci_high"]
    assert bootstrap_delta(base, aligned, seed=1) == first
    assert bootstrap_delta(base, aligned, seed=2)["ci_low"] != first["ci_low"]
    # the CI covers the true delta in most of 40 repeated experiments (nominal 95%)
    covered = 0
    for trial in range(40):
        noise = np.random.default_rng(100 + trial)
        b = MetricValues(difficulty + noise.normal(0, 0.5, size=240), groups, True)
        a = MetricValues(difficulty + 0.3 + noise.normal(0, 0.5, size=240), groups, True)
        ci = bootstrap_delta(b, a, num_samples=500, seed=trial)
        covered += ci["ci_low"] <= 0.3 <= ci["ci_high"]
    assert covered >= 34


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probes: [{name: a, kind: kl, bogus: 1}]", r"suite.yaml: probes.0.bogus: unknown field 'bogus'; allowed: name, kind"),
        ("probes: [{name: a}]", r"suite.yaml: probes.0: a 'scores' probe needs at least one entry in scorers"),
        ("probes: [{name: a, scorers: [{name: nope}]}]", r"suite.yaml: probes.0.scorers.0.name: unknown scorer 'nope'"),
        ("probes: [{name: a, kind: kl, prompts: {tasks: [colour]}}]", r"suite.yaml: probes.0.prompts.tasks.0: .*'count'"),
        ("sampler: {num_steps: 0}\nprobes: [{name: a, kind: kl}]", r"suite.yaml: probes.0.sampler.num_steps: .*greater than or equal to 1"),
        ("probes: [{name: a, kind: kl, prompts: {source: file, path: none.txt}}]", r"probes.0.prompts.path: file not found: none.txt"),
        ("probes: []", r"suite.yaml: probes: .*at least 1"),
        ("include: missing.yaml\nprobes: [{name: a, kind: kl}]", r"include: file not found: missing.yaml"),
    ],
)
def test_suite_errors_name_the_file_and_field(tmp_path, text, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_suite(path)


def test_suites_shipped_in_recipes_load():
    full, quick = load_suite(RECIPES / "toy_forgetting.yaml"), load_suite(RECIPES / "toy_quick.yaml")
    assert {p.kind for p in full.probes} == {"scores", "kl", "diversity", "flow_matching"}
    assert quick.alarm == full.alarm and all(p.sampler.seed == 1234 for p in quick.probes)  # included defaults
    assert all(p.prompts.split == "heldout" for p in full.probes)


def _stream(reward_slope: float, probe_slope: float, steps: int = 30, every: int = 5) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for step in range(steps + 1):
        row = {"step": step, "reward/count": 0.3 + reward_slope * step + rng.normal(0, 0.01), "reward/failed_fraction": 0.0}
        row["reward/total"] = row["reward/count"]
        if step % every == 0:
            row["probe/heldout/color"] = 0.8 + probe_slope * step
            row["probe/kl_base/kl"] = 1e-4 * step  # rising KL alone is not an alarm
            row["probe/fm/fm_loss"] = 0.5
        rows.append(row)
    return rows


def test_hacking_alarm_fires_when_reward_rises_and_a_probe_falls():
    directions = {"probe/heldout/color": True, "probe/kl_base/kl": None, "probe/fm/fm_loss": False}
    alarm = HackingAlarm(AlarmConfig(margin=0.1, window=3, patience=1, stop=True), directions)
    messages = [m for m in map(alarm.update, _stream(0.01, -0.01)) if m]
    assert messages and alarm.should_stop
    assert "probe/heldout/color" in messages[0] and "reward/count" in messages[0] and "kl" not in messages[0].split("(")[2]
    first_step = int(messages[0].split("step ")[1].split(":")[0])
    assert first_step == 10  # 0.8 -> 0.7 at step 10 is -12.5%, beyond the 10% margin (-6% at step 5 is not)


@pytest.mark.parametrize(("reward_slope", "probe_slope"), [(0.01, 0.0), (0.01, 0.002), (0.0, -0.01), (-0.01, -0.01)])
def test_hacking_alarm_stays_quiet_on_healthy_or_non_hacking_streams(reward_slope, probe_slope):
    """Rising reward with stable or improving probes is alignment; falling probes without a rising reward is not hacking."""
    alarm = HackingAlarm(AlarmConfig(margin=0.1, window=3), {"probe/heldout/color": True, "probe/fm/fm_loss": False})
    assert not any(alarm.update(row) for row in _stream(reward_slope, probe_slope)) and not alarm.should_stop


def test_hacking_alarm_watches_lower_is_better_probes():
    alarm = HackingAlarm(AlarmConfig(margin=0.2, window=2, patience=1), {"probe/fm/fm_loss": False})
    rows = _stream(0.01, 0.0)
    for row in rows:
        if "probe/fm/fm_loss" in row:
            row["probe/fm/fm_loss"] = 0.5 + 0.01 * row["step"]  # loss rises 20% by step 10
    fired = [row["step"] for row in rows if alarm.update(row)]
    assert fired and fired[0] == 15 and not alarm.should_stop  # 0.5 -> 0.65 (+30%); +20% at step 10 is not beyond


def _write_run(run_dir: Path, reward_gain: float, steps: int = 40, kl_every: int = 1) -> None:
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(int(reward_gain * 100))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            row = {
                "step": step,
                "reward/toy_verifier_count": 0.2 + reward_gain * step / steps + rng.normal(0, 0.02),
                "reward/ocr": 0.5 - reward_gain * step / (2 * steps) + rng.normal(0, 0.02),
                "reward/failed_fraction": 0.0,
                "kl/ref": 1e-5 * step * (1 + reward_gain),
                "mask_fraction": 0.1,
            }
            row["reward/total"] = row["reward/toy_verifier_count"] + row["reward/ocr"]
            if not (step == 1 or step % kl_every == 0 or step == steps):  # train.diagnostics_every: no kl/ref logged
                del row["kl/ref"]
            if step % 10 == 0:
                row["probe/heldout_count/color"] = 0.8 - 0.002 * step
                row["probe/kl_base/kl"] = 1e-5 * step
            f.write(json.dumps(row) + "\n")


def test_mogen_report_renders_pngs_from_metrics(tmp_path):
    _write_run(tmp_path / "run_a", 0.3)
    _write_run(tmp_path / "run_b", 0.6, kl_every=10)
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path / "run_a")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run_a" / "report"
    for name in ("reward_vs_step.png", "reward_vs_kl.png", "probes_vs_step.png", "gains.png"):
        image = Image.open(out / name)
        assert image.width > 300 and len(np.unique(np.asarray(image.convert("L")))) > 10, name  # not a blank canvas
    assert not (out / "pareto.png").exists()
    markdown = (out / "report.md").read_text()
    assert "| run_a | reward/toy_verifier_count |" in markdown and "![gains](gains.png)" in markdown

    result = runner.invoke(app, ["report", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "pareto.png").is_file() and "run_b" in (tmp_path / "cmp" / "report.md").read_text()
    # run_b logged kl/ref every 10 steps only: its start/end are those of the measured steps (no fake zeros)
    assert f"| run_b | kl/ref | {1e-5 * 1.6:.4g} | {1e-5 * 40 * 1.6:.4g} |" in (tmp_path / "cmp" / "report.md").read_text()

    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output


def test_mogen_eval_compares_base_and_lora_on_the_same_seeds(model_dir, tmp_path):
    """End to end through the user's path: model folder + a run's lora/ folder -> report.json, report.md, grids."""
    policy = _policy(model_dir)
    attach_lora(policy.transformer, LORA)
    _perturb_lora(policy, scale=0.2)
    lora_dir = tmp_path / "run" / "lora"
    lora_dir.mkdir(parents=True)
    save_lora(policy.transformer, lora_dir / "adapter.safetensors")
    (lora_dir / "adapter_config.json").write_text(json.dumps(LORA.model_dump(mode="json")))
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(SUITE)
    args = ["eval", "--suite", str(suite_path), "--model", str(model_dir), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--lora", str(lora_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "eval" / "suite" / "report.json").read_text())
    assert report["metrics"]["kl_base/kl"]["delta"] > 0 and report["metrics"]["kl_base/kl"]["base"] == 0.0
    assert report["metrics"]["count/vivid"]["delta"] != 0 and report["lora"] == str(lora_dir / "adapter.safetensors")

    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "base")])
    assert result.exit_code == 0, result.output
    base_only = json.loads((tmp_path / "base" / "report.json").read_text())
    assert all(row["delta"] == 0.0 for key, row in base_only["metrics"].items() if key != "count/text")
    assert base_only["metrics"]["count/vivid"]["base"] == report["metrics"]["count/vivid"]["base"]  # same seeds

    result = CliRunner().invoke(app, [*args, "--lora", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "adapter.safetensors not found" in result.output
    (lora_dir / "adapter_config.json").unlink()
    result = CliRunner().invoke(app, [*args, "--lora", str(tmp_path / "run")])  # the run folder works too
    assert result.exit_code == 2 and "adapter_config.json not found" in result.output


def test_eval_takes_the_model_from_the_run_recipe_unless_overridden(tmp_path):
    from mogen.evaluation.report import locate_lora, resolve_model

    (tmp_path / "config.yaml").write_text(
        "model: {name: /models/sd35, family: sd3, dtype: bfloat16}\nsampler: {guidance_scale: 4.5}\n"
        "lora: {rank: 8, alpha: 16}\nrewards: [{name: vivid}]\n"
    )
    checkpoint = tmp_path / "checkpoints" / "step-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "lora.safetensors").write_bytes(b"")
    source = locate_lora(checkpoint)  # a checkpoint's LoRA config comes from the run's recipe
    assert source.weights == checkpoint / "lora.safetensors" and source.config.rank == 8
    cfg, guidance = resolve_model(None, None, source.recipe)
    assert (cfg.name, cfg.family, cfg.dtype, guidance) == ("/models/sd35", "sd3", "bfloat16", 4.5)
    cfg, _ = resolve_model("/other", "flux", tmp_path / "config.yaml")
    assert (cfg.name, cfg.family, cfg.dtype) == ("/other", "flux", "bfloat16")
    assert resolve_model(None, None, None)[0].name == "builtin:tiny"
    with pytest.raises(ConfigError, match="--model/--family: family: unknown family 'sdxl'; known: tiny, sd3, flux, .*wan"):
        resolve_model(None, "sdxl", None)


def test_hacking_alarm_patience_ignores_a_single_bad_probe_evaluation():
    rows = _stream(0.01, 0.0)
    for row in rows:
        if row["step"] == 15:
            row["probe/heldout/color"] = 0.5  # one noisy evaluation
        if row["step"] >= 25 and "probe/heldout/color" in row:
            row["probe/heldout/color"] = 0.6  # a lasting drop
    alarm = HackingAlarm(AlarmConfig(margin=0.1, window=3, patience=2), {"probe/heldout/color": True})
    fired = [row["step"] for row in rows if alarm.update(row)]
    assert fired == [30]
