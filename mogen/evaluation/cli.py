"""`mogen eval` and `mogen report`: parse arguments and dispatch to mogen.evaluation. No logic here."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mogen.cli_errors import user_errors


def eval_command(
    suite: Path = typer.Option(..., "--suite", "-s", help="Suite YAML, e.g. recipes/eval/toy_forgetting.yaml."),
    model: str | None = typer.Option(None, "--model", "-m", help="'builtin:tiny' or a local model folder; default: the run's model, else builtin:tiny."),
    family: str | None = typer.Option(None, "--family", help="tiny, sd3, flux, flux2, qwenimage, zimage or wan; default: the run's, else tiny."),
    lora: Path | None = typer.Option(None, "--lora", help="A run folder, its lora/ folder, or a checkpoint folder (checkpoints/step-N)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder; default <run>/eval/<suite>[-step-N], or eval/<suite> for the base alone."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default cuda when available."),
) -> None:
    """Evaluate the base model and the aligned model (base + LoRA) on the same seeds: gains and forgetting."""
    from mogen.evaluation.report import evaluate
    from reward_zoo import ScorerConfigError

    with user_errors():
        try:
            report, out = evaluate(suite, model, family, lora, out, device)
        except ScorerConfigError as err:
            typer.echo(f"error: {err}", err=True)
            sys.exit(2)
    for key, row in report["metrics"].items():
        typer.echo(f"{key:40s} base {row['base']:.4g}  aligned {row['aligned']:.4g}  delta {row['delta']:+.3g} "
                   f"[{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]  {row['verdict']}")
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {out / 'report.md'} (data: {out / 'report.json'})")


def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="One or more `mogen align` run folders (with metrics.jsonl)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder; default <run>/report, or ./report for several runs."),
) -> None:
    """Plot runs: reward vs step, reward vs KL to base, held-out probes, per-objective gains (Pareto for several runs)."""
    from mogen.evaluation.runs import report_runs

    out = out or (run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report"))
    with user_errors():
        written = report_runs(run_dirs, out)
    typer.echo("wrote " + ", ".join(str(p) for p in written))
