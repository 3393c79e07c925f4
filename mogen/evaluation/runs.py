"""`mogen report`: figures and a summary of one or more training runs, from their metrics.jsonl.

    reward_vs_step.png   every trained objective (reward/*) against the step
    reward_vs_kl.png     reward/total against the KL to the base model (kl/ref)
    probes_vs_step.png   held-out probes (probe/*) against the step, when the run logged any
    gains.png            per-objective gain of each run; pareto.png when several runs have several objectives
    report.md            a table of start/end values and the figures
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mogen.config import ConfigError
from mogen.evaluation.plots import Series, plot_gains, plot_over_steps, plot_pareto, plot_reward_vs_kl

NOT_OBJECTIVES = ("reward/failed_fraction", "reward/total")


def load_metrics(run_dir: Path) -> Series:
    """metrics.jsonl as arrays per key (NaN where a step did not log the key), sorted by step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a `mogen align` run directory?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ConfigError(f"{path}:{number}: every line needs a 'step' field")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: empty (the run has not logged a step yet)")
    rows.sort(key=lambda r: r["step"])
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    return {k: np.array([float(r.get(k, np.nan)) for r in rows]) for k in keys}


def objectives(series: Series) -> list[str]:
    """The trained objectives' keys: reward/<objective>, or reward/total if that is all there is."""
    keys = [k for k in series if k.startswith("reward/") and k not in NOT_OBJECTIVES]
    return keys or [k for k in ("reward/total",) if k in series]


def start_end(values: np.ndarray) -> tuple[float, float]:
    """Means of the first and last tenth (at least one value) of the finite values."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    window = max(1, len(finite) // 10)
    return float(finite[:window].mean()), float(finite[-window:].mean())


def _names(run_dirs: list[Path]) -> list[str]:
    """Short distinct labels: the run folder names (with their parent when two folders share a name)."""
    names = [d.resolve().name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in run_dirs]
    return names


def report_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """Write the figures and report.md of the runs into `out`; returns the written files."""
    runs = {name: load_metrics(d) for name, d in zip(_names(run_dirs), run_dirs)}
    out.mkdir(parents=True, exist_ok=True)
    reward_keys = sorted({k for s in runs.values() for k in [*objectives(s), "reward/total"] if k in s})
    probe_keys = sorted({k for s in runs.values() for k in s if k.startswith("probe/")})
    figures = [plot_over_steps(runs, reward_keys, out / "reward_vs_step.png", "Trained rewards", smoothed=True)]
    if any("kl/ref" in s for s in runs.values()):
        figures.append(plot_reward_vs_kl(runs, "reward/total", out / "reward_vs_kl.png"))
    if probe_keys:
        figures.append(plot_over_steps(runs, probe_keys, out / "probes_vs_step.png", "Held-out probes", smoothed=False))
    gains = {name: {k: np.subtract(*start_end(s[k])[::-1]) for k in objectives(s)} for name, s in runs.items()}
    figures.append(plot_gains(gains, out / "gains.png"))
    if len(runs) > 1 and len({k for g in gains.values() for k in g}) > 1:
        figures.append(plot_pareto(gains, out / "pareto.png"))
    report = out / "report.md"
    report.write_text(_markdown(runs, run_dirs, reward_keys + probe_keys + ["kl/ref"], figures, out))
    return [*figures, report]


def _markdown(runs: dict[str, Series], run_dirs: list[Path], keys: list[str], figures: list[Path], out: Path) -> str:
    lines = ["# Run report", "", "Runs: " + ", ".join(f"`{n}` ({d})" for n, d in zip(runs, run_dirs)), ""]
    lines += ["| run | metric | start | end | change |", "|---|---|---|---|---|"]
    for name, series in runs.items():
        for key in keys:
            if key in series:
                start, end = start_end(series[key])
                lines.append(f"| {name} | {key} | {start:.4g} | {end:.4g} | {end - start:+.4g} |")
    lines += ["", "start/end: mean of the first/last tenth of the logged values.", ""]
    for path in figures:
        lines += [f"![{path.stem}]({path.relative_to(out)})", ""]
    return "\n".join(lines)
