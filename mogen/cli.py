"""The `mogen` command line. It only parses arguments and dispatches; logic lives in the modules."""

from __future__ import annotations

from pathlib import Path

import typer

from mogen import __version__
from mogen.cli_errors import user_errors
from mogen.evaluation.cli import eval_command, report_command
from reward_zoo.cli import app as rewards_app
from reward_zoo.cli import serve_reward_command

app = typer.Typer(
    name="mogen",
    help="Align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mogen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards."""


@app.command()
def align(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML, e.g. recipes/quickstart.yaml."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set rollout.group_size=8 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and exit."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
) -> None:
    """Align a model to a reward mixture with Flow-DPPO (or the Flow-GRPO baseline)."""
    from mogen.config import load_recipe, recipe_to_yaml

    with user_errors():
        resolved = load_recipe(recipe, overrides)
        if dry_run:
            typer.echo(recipe_to_yaml(resolved), nl=False)
            return
        from mogen.trainer import align as run_align

        run_dir = run_align(resolved, resume=resume)
    typer.echo(f"done: metrics {run_dir / 'metrics.jsonl'}, grids {run_dir / 'samples'}, LoRA {run_dir / 'lora'}")


app.add_typer(rewards_app, name="rewards")  # `mogen rewards ...`
app.command("serve-reward")(serve_reward_command)


@app.command("export")
def export(
    run: Path = typer.Option(..., "--run", help="A run directory written by `mogen align`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write pytorch_lora_weights.safetensors into."),
    step: int | None = typer.Option(None, "--step", help="Export checkpoints/step-N instead of the final LoRA."),
) -> None:
    """Export a run's LoRA in the diffusers format: `pipeline.load_lora_weights(OUT)` loads it as is."""
    from mogen.export import export_run

    with user_errors():
        path = export_run(run, out, step)
    typer.echo(f"wrote {path}: load it with pipeline.load_lora_weights({str(out)!r})")


app.command("eval")(eval_command)  # `mogen eval`, `mogen report`
app.command("report")(report_command)


@app.command("sample")
def sample(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat the option for several rows."),
    out: Path = typer.Option(Path("grid.png"), "--out", "-o", help="Where to write the PNG grid."),
    model: str = typer.Option("builtin:tiny", "--model", help="'builtin:tiny', a TinyT2I folder, or a local diffusers folder."),
    family: str = typer.Option("tiny", "--family", help="Model family: tiny, sd3, flux, flux2, qwenimage, zimage or wan."),
    resolution: int | None = typer.Option(None, "--resolution", help="Image side in pixels (diffusers families)."),
    frames: int | None = typer.Option(None, "--frames", help="Frames per video (wan); one GIF per prompt is written too."),
    guidance: float = typer.Option(1.0, "--guidance", help="Guidance scale as in recipes' sampler.guidance_scale."),
    shift: float = typer.Option(1.0, "--shift", help="Schedule shift as in recipes' sampler.shift (diffusers families)."),
    num: int = typer.Option(8, "--num", "-n", min=1, help="Images per prompt."),
    steps: int = typer.Option(10, "--steps", min=1, help="Denoising steps."),
    sampler: str = typer.Option("ode", "--sampler", help="'ode' (deterministic Euler) or 'sde' (Flow-SDE)."),
    eta: float = typer.Option(0.7, "--eta", min=0.0, help="Noise level of the SDE sampler."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
) -> None:
    """Sample images for each prompt and write them as a labelled grid (one row per prompt); videos also as GIFs."""
    if sampler not in ("ode", "sde"):
        raise typer.BadParameter(f"must be 'ode' or 'sde', got {sampler!r}", param_hint="--sampler")
    if family != "tiny":
        _sample_pipeline(list(prompt), out, model, family, resolution, frames, guidance, shift, num, steps, sampler, seed, device)
        return
    from mogen.models.tiny import TinyT2I
    from mogen.samples import labelled_grid

    try:
        t2i = TinyT2I.from_pretrained(model, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    prompts = [p for p in prompt for _ in range(num)]
    images = t2i.sample(prompts, num_steps=steps, sampler=sampler, eta=eta, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, list(prompt), num, scale=4).save(out)
    typer.echo(f"wrote {len(prompts)} images to {out}")


@app.command("calibrate")
def calibrate(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML, e.g. recipes/quickstart.yaml."),
    steps: int = typer.Option(5, "--steps", min=1, help="Run the recipe's first N steps (nothing is written)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set algorithm.delta=1e-5 (repeatable)."),
    target_mask: float = typer.Option(0.05, "--target-mask", help="Report the delta / eps that would stop this share of sample-steps."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Pre-flight a recipe: on-policy check, the KL one step moves, where delta / eps bind, reward health."""
    from rich.console import Console

    from mogen.calibrate import calibrate as run_calibrate, render, write_json
    from mogen.config import load_recipe

    with user_errors():
        report = run_calibrate(load_recipe(recipe, overrides), steps=steps, target=target_mask)
        Console().print(render(report))
        if json_path is not None:
            write_json(report, json_path)
            typer.echo(f"wrote {json_path}")


def _sample_pipeline(prompts: list[str], out: Path, model: str, family: str, resolution: int | None, frames: int | None,
                     guidance: float, shift: float, num: int, steps: int, sampler: str, seed: int, device: str) -> None:
    """`mogen sample` for a diffusers pipeline folder: deterministic ODE samples through the family's adapter."""
    from pydantic import ValidationError

    from mogen.config import ModelConfig
    from mogen.models.loading import load_policy
    from mogen.samples import write_samples

    if sampler != "ode":
        raise typer.BadParameter(f"--sampler sde is for the tiny model; {family} samples with 'ode'", param_hint="--sampler")
    try:
        cfg = ModelConfig(name=model, family=family, resolution=resolution, num_frames=frames)
    except ValidationError as err:
        raise typer.BadParameter(err.errors()[0]["msg"], param_hint="--family/--resolution/--frames") from None
    with user_errors():
        try:
            policy = load_policy(cfg, device=device, guidance_scale=guidance)
        except ValueError as err:  # an adapter's check of resolution, frames or guidance (ConfigErrors pass through)
            if type(err) is not ValueError:
                raise
            raise typer.BadParameter(str(err), param_hint="--resolution/--frames/--guidance") from None
        written = write_samples(policy, prompts, num, steps, shift, seed, out)
    typer.echo(f"wrote {len(prompts) * num} samples to {', '.join(str(p) for p in written)}")
