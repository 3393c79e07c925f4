"""`mogen eval`: evaluate the base and the aligned model on one suite, same seeds, and write the report.

    out/report.json    every metric for base and aligned, the delta with a bootstrap 95% CI, seeds, versions
    out/report.md      the metrics table, skipped probes, the figures
    out/deltas.png     each metric's delta with its CI
    out/grids/*.png    base | aligned image grids of each sampled probe (same prompts, same seeds)

The delta's CI is a cluster bootstrap over prompts: samples of one prompt share its difficulty, so the
prompts (not the samples) are resampled; each draw's delta is the mean over prompts of the per-prompt mean
of (aligned - base), paired sample by sample (the same seed gives both models the same noise).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError

from mogen.config import ConfigError, LoraConfig, ModelConfig, _format_validation_error, load_recipe
from mogen.evaluation.plots import plot_deltas
from mogen.evaluation.probes import MetricValues, SuiteResult, per_group_means, run_suite
from mogen.evaluation.suite import Suite, load_suite
from mogen.lora import attach_lora, load_lora
from mogen.samples import FONT, labelled_grid

NUM_BOOTSTRAP = 2000
PACKAGES = ("mogen", "torch", "diffusers", "transformers", "peft", "numpy")


def bootstrap_delta(
    base: MetricValues, aligned: MetricValues, num_samples: int = NUM_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """delta = mean over prompts of mean(aligned - base), with a percentile cluster-bootstrap CI over prompts.

    Units where either model has no value (NaN) are left out of both. With a single prompt, samples are
    resampled instead. Deterministic given `seed`.
    """
    if not np.array_equal(base.groups, aligned.groups):
        raise ValueError("base and aligned results must come from the same prompts and seeds")
    diff = aligned.values - base.values
    groups = base.groups
    if not np.isfinite(diff).any():
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "num_prompts": 0}
    if len(np.unique(groups[np.isfinite(diff)])) < 2:
        groups = np.arange(len(diff))
    per_prompt = per_group_means(diff, groups)
    rng = np.random.default_rng(seed)
    draws = per_prompt[rng.integers(0, len(per_prompt), size=(num_samples, len(per_prompt)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return {"delta": float(per_prompt.mean()), "ci_low": float(low), "ci_high": float(high), "num_prompts": len(per_prompt)}


def verdict(row: dict) -> str:
    """'better' / 'worse' when the CI excludes 0 (in the metric's better direction), 'changed' for KL, else '~'."""
    if not np.isfinite(row["delta"]) or row["ci_low"] <= 0 <= row["ci_high"]:
        return "~"
    if row["higher_is_better"] is None:
        return "changed"
    return "better" if (row["delta"] > 0) == row["higher_is_better"] else "worse"


def compare(base: SuiteResult, aligned: SuiteResult, seed: int = 0) -> dict[str, dict]:
    """Per metric: base and aligned means, the delta with its CI, the direction and the verdict."""
    rows = {}
    for key, base_values in base.metrics.items():
        aligned_values = aligned.metrics[key]
        row = {"base": base_values.mean(), "aligned": aligned_values.mean(), "higher_is_better": base_values.higher_is_better}
        row.update(bootstrap_delta(base_values, aligned_values, seed=seed))
        row["verdict"] = verdict(row)
        rows[key] = row
    return rows


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def side_by_side(prompts: list[str], base: torch.Tensor, aligned: torch.Tensor, per_row: int) -> Image.Image:
    """The base grid and the aligned grid next to each other, each under its title (tiles framed in grey, so
    images on white backgrounds stay apart)."""
    framed = [torch.nn.functional.pad(images, (1, 1, 1, 1), value=0.7) for images in (base, aligned)]
    left, right = (labelled_grid(images, prompts, per_row) for images in framed)
    title_h, gap = 20, 16
    canvas = Image.new("RGB", (left.width + gap + right.width, title_h + max(left.height, right.height)), "white")
    canvas.paste(left, (0, title_h))
    canvas.paste(right, (left.width + gap, title_h))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.truetype(FONT, 14)
    except OSError:
        font = ImageFont.load_default()
    draw.text((4, 1), "base", fill="black", font=font)
    draw.text((left.width + gap + 4, 1), "aligned", fill="black", font=font)
    return canvas


def write_report(out: Path, suite: Suite, base: SuiteResult, aligned: SuiteResult, meta: dict) -> dict:
    """Write report.json, report.md, deltas.png and the grids into `out`; returns the report dict."""
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(base, aligned)
    report = {
        **meta,
        "suite": suite.name,
        "seeds": {p.name: p.sampler.seed for p in suite.probes},
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": rows,
        "notes": sorted(set(base.notes) | set(aligned.notes)),
        "suite_config": suite.model_dump(mode="json"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    figures = []
    if rows:
        plot_deltas(rows, out / "deltas.png")
        figures.append(("Delta (aligned - base) with bootstrap 95% CI", "deltas.png"))
    for probe in suite.probes:
        if probe.name in base.grids:
            prompts, base_images = base.grids[probe.name]
            image = side_by_side(prompts, base_images, aligned.grids[probe.name][1], probe.sampler.images_per_prompt)
            (out / "grids").mkdir(exist_ok=True)
            image.save(out / "grids" / f"{probe.name}.png")
            figures.append((f"{probe.name}: base | aligned (same seeds)", f"grids/{probe.name}.png"))
    (out / "report.md").write_text(markdown(report, figures))
    return report


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.4g}"


def markdown(report: dict, figures: list[tuple[str, str]]) -> str:
    lines = [
        f"# Forgetting report: suite `{report['suite']}`",
        "",
        f"- model: `{report['model']}`; LoRA: `{report['lora'] or 'none (base vs base)'}`",
        f"- seeds per probe: {report['seeds']}; created {report['created']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items() if k != 'platform')}",
        "",
        "| metric | better | base | aligned | delta | 95% CI | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in report["metrics"].items():
        better = {True: "higher", False: "lower", None: "-"}[row["higher_is_better"]]
        ci = f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        lines.append(
            f"| {key} | {better} | {_fmt(row['base'])} | {_fmt(row['aligned'])} | {_fmt(row['delta'])} | {ci} | {row['verdict']} |"
        )
    lines.append("")
    lines.append("CI: cluster bootstrap over prompts (paired samples, same seeds). '~': the CI contains 0.")
    if report["notes"]:
        lines += ["", "## Skipped", ""] + [f"- {note}" for note in report["notes"]]
    for title, path in figures:
        lines += ["", f"## {title}", "", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"


@dataclass
class LoraSource:
    """Where an adapter's weights are, its LoRA config, and the run recipe (config.yaml) if there is one."""

    weights: Path
    config: LoraConfig
    recipe: Path | None


def locate_lora(path: Path) -> LoraSource:
    """Accept a run folder, its lora/ folder (adapter.safetensors + adapter_config.json) or a checkpoint folder
    (checkpoints/step-N/lora.safetensors, whose LoRA config comes from the run's config.yaml)."""
    if (path / "lora" / "adapter.safetensors").is_file():
        path = path / "lora"
    if (path / "adapter.safetensors").is_file():
        config = path / "adapter_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"--lora {path}: adapter_config.json not found next to adapter.safetensors")
        recipe = path.parent / "config.yaml"
        return LoraSource(path / "adapter.safetensors", LoraConfig.model_validate_json(config.read_text()), recipe if recipe.is_file() else None)
    if (path / "lora.safetensors").is_file():
        recipe = path.parent.parent / "config.yaml"
        if not recipe.is_file():
            raise FileNotFoundError(f"--lora {path}: a checkpoint's LoRA config comes from its run's config.yaml, not found at {recipe}")
        return LoraSource(path / "lora.safetensors", load_recipe(recipe).lora, recipe)
    raise FileNotFoundError(
        f"--lora {path}: adapter.safetensors not found (expected a run folder, its lora/ folder or checkpoints/step-N/)"
    )


def resolve_model(model: str | None, family: str | None, recipe_path: Path | None) -> tuple[ModelConfig, float]:
    """The model to evaluate and its guidance scale: the run's recipe, if any, unless overridden."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
        cfg, guidance = recipe.model, recipe.sampler.guidance_scale
    else:
        cfg, guidance = ModelConfig(), 1.0
    updates = {k: v for k, v in {"name": model, "family": family}.items() if v is not None}
    try:
        return ModelConfig.model_validate({**cfg.model_dump(), **updates}), guidance
    except ValidationError as err:
        raise ConfigError(_format_validation_error("--model/--family", err, root=ModelConfig)) from None


def default_out(suite_path: Path, source: LoraSource | None) -> Path:
    """<run>/eval/<suite> (a checkpoint's: <run>/eval/<suite>-step-N), or eval/<suite> for the base alone."""
    if source is None:
        return Path("eval") / suite_path.stem
    if source.weights.name == "lora.safetensors":  # checkpoints/step-N/
        return source.weights.parents[2] / "eval" / f"{suite_path.stem}-{source.weights.parent.name}"
    return source.weights.parents[1] / "eval" / suite_path.stem


def evaluate(
    suite_path: str | Path, model: str | None, family: str | None, lora: Path | None, out: Path | None, device: str | None = None
) -> tuple[dict, Path]:
    """Load the model (and the LoRA), run the suite as base and as aligned on the same seeds, write the report.

    Returns the report and the folder it was written to.
    """
    from mogen.models.loading import load_policy  # the model adapters import diffusers: only when evaluating

    suite = load_suite(suite_path)
    source = locate_lora(lora) if lora is not None else None
    out = out or default_out(Path(suite_path), source)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_cfg, guidance = resolve_model(model, family, source.recipe if source else None)
    policy = load_policy(model_cfg, device=torch_device, guidance_scale=guidance)
    if source is not None:
        attach_lora(policy.transformer, source.config)
        load_lora(policy.transformer, source.weights)
        policy.transformer.to(torch_device)
    base = run_suite(policy, suite, as_base=True)
    aligned = run_suite(policy, suite) if source is not None else base
    meta = {"model": model_cfg.name, "family": model_cfg.family, "lora": str(source.weights) if source else None, "device": str(torch_device)}
    return write_report(out, suite, base, aligned, meta), out
