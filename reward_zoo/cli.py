"""`mogen rewards ...`: list the scorers, score a folder of images. Parsing and printing only."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
import yaml

app = typer.Typer(help="Reward models (scorers): list them, score a folder of images.", no_args_is_help=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors the user can fix (unknown reward, bad argument, missing weights, bad folder) -> one line, exit 2."""
    from reward_zoo.base import ScorerConfigError

    try:
        yield
    except (ScorerConfigError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


def _parse_sets(assignments: list[str]) -> dict:
    """--set key=value pairs -> kwargs; values are parsed as YAML (1.0 -> float, true -> bool, [a] -> list)."""
    kwargs = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set backend=easyocr")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


@app.command("list")
def list_rewards() -> None:
    """Show every registered reward: what it measures and whether its default weights are on this machine."""
    from rich.console import Console
    from rich.table import Table

    from reward_zoo.registry import available

    table = Table(title="mogen rewards")
    for column in ("name", "measures", "weights", "source"):
        table.add_column(column, overflow="fold")
    for info in available().values():
        mark = "[green]yes[/green]" if info.weights_present else "[red]no[/red]"
        table.add_row(info.name, info.description, f"{mark} {info.weights}", info.source)
    Console().print(table)
    typer.echo("Arguments: `mogen rewards score --reward NAME --set key=value`; see reward_zoo/README.md.")


@app.command("score")
def score(
    reward: str = typer.Option(..., "--reward", "-r", help="A reward name from `mogen rewards list`."),
    images: Path = typer.Option(..., "--images", help="Folder of .png/.jpg/.jpeg/.webp/.bmp images."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Text file (one line per image, sorted filenames) or .jsonl {file, prompt[, metadata]}."
    ),
    sets: list[str] = typer.Option([], "--set", help="A reward argument: --set backend=easyocr (repeatable)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also write one JSON object per image here."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
) -> None:
    """Score every image of a folder and print (and optionally save) per-image scores."""
    from rich.console import Console
    from rich.table import Table

    import reward_zoo
    from reward_zoo.folder import read_folder, score_folder

    with _user_errors():
        items = read_folder(images, prompts)
        scorer = reward_zoo.get(reward, device=device, **_parse_sets(sets))
        rows = score_folder(scorer, images, items, batch_size=batch_size)

    extra = [k for k in rows[0] if k not in ("file", "prompt", "score", "failed", "error")]
    table = Table(title=f"{reward} on {images}")
    for column in ("file", "prompt", "score", *extra):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = "[red]failed[/red] " + str(row["error"]) if row["failed"] else f"{row['score']:.4f}"
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in extra]
        table.add_row(row["file"], row["prompt"], value, *cells)
    Console().print(table)
    scored = [r["score"] for r in rows if not r["failed"]]
    mean = f"{sum(scored) / len(scored):.4f}" if scored else "n/a"
    typer.echo(f"{len(rows)} images, {len(rows) - len(scored)} failed, mean score {mean}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        typer.echo(f"wrote {output}")


def serve_reward_command(
    name: str = typer.Argument(..., help="A reward name from `mogen rewards list`."),
    sets: list[str] = typer.Option([], "--set", help="A reward argument: --set backend=easyocr (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --allow-remote."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port; 0 picks a free one (printed at start)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --host (needs --token-env)."),
    token_env: str | None = typer.Option(
        None, "--token-env", help="Environment variable holding a bearer token that every request must carry."
    ),
    max_request_mb: float = typer.Option(64.0, "--max-request-mb", min=0.001, help="Largest request body accepted."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most images merged from concurrent requests."),
) -> None:
    """Serve a reward over HTTP + JSON for the `remote` scorer (schema: reward_zoo/protocol.py)."""
    import reward_zoo
    from reward_zoo.server import check_exposure, serve

    with _user_errors():
        kwargs = _parse_sets(sets)
        token = os.environ.get(token_env) if token_env else None
        if token_env and not token:
            raise ValueError(f"--token-env {token_env}: that environment variable is not set")
        check_exposure(host, allow_remote, token)
        scorer = reward_zoo.get(name, device=device, **kwargs)
        serve(name, scorer, kwargs, host=host, port=port, token=token,
              max_request_bytes=int(max_request_mb * 2**20), max_batch=max_batch)
