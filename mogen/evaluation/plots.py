"""Figures of the eval and run reports (matplotlib, written as PNG; no display needed)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

Series = dict[str, np.ndarray]  # metric -> values, with "step" holding the steps


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_deltas(rows: dict[str, dict], path: Path) -> Path:
    """One panel per metric: the delta (aligned - base) with its 95% CI, green if better, red if worse."""
    colors = {"better": "tab:green", "worse": "tab:red", "changed": "tab:purple", "~": "tab:gray"}
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 0.75 * len(rows) + 0.6), squeeze=False)
    for ax, (key, row) in zip(axes[:, 0], rows.items()):
        if np.isfinite(row["delta"]):
            err = [[row["delta"] - row["ci_low"]], [row["ci_high"] - row["delta"]]]
            ax.errorbar([row["delta"]], [0], xerr=err, fmt="o", color=colors[row["verdict"]], capsize=4)
        span = max(abs(row["ci_low"]), abs(row["ci_high"]), abs(row["delta"])) if np.isfinite(row["delta"]) else 0.0
        ax.set_xlim(-1.3 * span, 1.3 * span) if span > 0 else ax.set_xlim(-1, 1)  # exactly 0: a plain axis
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks([])
        better = {True: "higher is better", False: "lower is better", None: "distance"}[row["higher_is_better"]]
        ax.set_title(f"{key}  ({better}; base {row['base']:.3g} -> {row['aligned']:.3g})", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("aligned - base (95% bootstrap CI over prompts)")
    return _save(fig, path)


def smooth(values: np.ndarray, alpha: float = 0.2) -> np.ndarray:
    """Exponential moving average that skips NaNs (noisy per-step rewards need it to show a trend)."""
    out, state = np.empty_like(values, dtype=float), math.nan
    for i, v in enumerate(values):
        if np.isfinite(v):
            state = v if not np.isfinite(state) else (1 - alpha) * state + alpha * v
        out[i] = state
    return out


def _grid(n: int, width: float = 4.2, height: float = 3.0) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def plot_over_steps(runs: dict[str, Series], keys: list[str], path: Path, title: str, smoothed: bool) -> Path:
    """One panel per metric key, one line per run (raw values faint, the moving average on top)."""
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        for color, (name, series) in zip(itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"]), runs.items()):
            if key not in series:
                continue
            finite = np.isfinite(series[key])
            steps, values = series["step"][finite], series[key][finite]
            if smoothed:
                ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
                ax.plot(steps, smooth(values), color=color, label=name)
            else:
                ax.plot(steps, values, "o-", color=color, label=name, ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_reward_vs_kl(runs: dict[str, Series], reward_key: str, path: Path) -> Path:
    """Reward against the KL to the base model (the "KL-proximal efficiency" view): up-and-left is efficient.

    Dots are the steps that measured kl/ref; the line is the moving average over every step (kl/ref interpolated
    between measurements), from the first step to the last (big dot).
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, series in runs.items():
        if reward_key not in series or "kl/ref" not in series:
            continue
        rows = np.isfinite(series[reward_key])
        steps, kl, reward = series["step"][rows], series["kl/ref"][rows], series[reward_key][rows]
        measured = np.isfinite(kl)  # kl/ref is measured every train.diagnostics_every steps: the line interpolates
        if not measured.any():
            continue
        kl_line = np.interp(steps, steps[measured], kl[measured])
        line = ax.plot(smooth(kl_line, 0.1), smooth(reward, 0.1), label=name)[0]
        ax.scatter(kl[measured], reward[measured], s=6, alpha=0.3, color=line.get_color())
        ax.plot(line.get_xdata()[-1:], line.get_ydata()[-1:], "o", color=line.get_color())
    ax.set_xlabel("KL to base (kl/ref: per trained step, mean over dims)")
    ax.set_ylabel(reward_key)
    ax.set_title("Reward vs KL to base", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_gains(gains: dict[str, dict[str, float]], path: Path) -> Path:
    """Per-objective gain (last window - first window) of each run, grouped bars."""
    objectives = sorted({k for g in gains.values() for k in g})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(objectives) * max(1, len(gains)) ** 0.5 + 2), 3.8))
    width = 0.8 / len(gains)
    for i, (name, gain) in enumerate(gains.items()):
        x = np.arange(len(objectives)) + i * width - 0.4 + width / 2
        ax.bar(x, [gain.get(k, np.nan) for k in objectives], width, label=name)
    ax.set_xticks(np.arange(len(objectives)), [k.removeprefix("reward/") for k in objectives], rotation=20, fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("gain (end - start)")
    ax.set_title("Per-objective gains", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(gains: dict[str, dict[str, float]], path: Path) -> Path:
    """Gain in one objective against another, one point per run, for every pair of objectives (max 3 pairs)."""
    objectives = sorted({k for g in gains.values() for k in g})
    pairs = list(itertools.combinations(objectives, 2))[:3]
    fig, axes = _grid(len(pairs), 4.4, 4.0)
    for ax, (a, b) in zip(axes, pairs):
        for name, gain in gains.items():
            ax.scatter(gain.get(a, np.nan), gain.get(b, np.nan), s=30)
            ax.annotate(name, (gain.get(a, np.nan), gain.get(b, np.nan)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="gray", lw=0.6)
        ax.axvline(0, color="gray", lw=0.6)
        ax.margins(0.25)  # room for the run labels
        ax.set_xlabel(f"gain {a.removeprefix('reward/')}", fontsize=8)
        ax.set_ylabel(f"gain {b.removeprefix('reward/')}", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Pareto view: per-objective gains of each run (up-right is better)", fontsize=10)
    return _save(fig, path)
