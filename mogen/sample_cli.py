"""`mogen sample`: draw images from a model for a few prompts and save them as one labelled grid."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from PIL import Image, ImageDraw, ImageFont

from mogen.models.tiny import BUILTIN_TINY, TinyT2I


def labelled_grid(images: torch.Tensor, prompts: list[str], num_per_prompt: int, scale: int = 4) -> Image.Image:
    """One row per prompt (its text above it), `num_per_prompt` images per row, nearest-upscaled by `scale`."""
    _, _, h, w = images.shape
    cell_h, cell_w, pad, label_h = h * scale, w * scale, 4, 18
    font = ImageFont.load_default(size=13)
    grid = Image.new("RGB", (pad + num_per_prompt * (cell_w + pad), len(prompts) * (label_h + cell_h + pad) + pad), (200, 200, 200))
    draw = ImageDraw.Draw(grid)
    pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    for row, prompt in enumerate(prompts):
        top = pad + row * (label_h + cell_h + pad)
        draw.text((pad, top), prompt, fill="black", font=font)
        for col in range(num_per_prompt):
            tile = Image.fromarray(pixels[row * num_per_prompt + col]).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (pad + col * (cell_w + pad), top + label_h))
    return grid


def sample(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat the option for several rows."),
    out: Path = typer.Option(Path("grid.png"), "--out", "-o", help="Where to write the PNG grid."),
    model: str = typer.Option(BUILTIN_TINY, "--model", help="'builtin:tiny' or a folder written by TinyT2I.save_pretrained."),
    num: int = typer.Option(8, "--num", "-n", min=1, help="Images per prompt."),
    steps: int = typer.Option(10, "--steps", min=1, help="Denoising steps."),
    sampler: str = typer.Option("ode", "--sampler", help="'ode' (deterministic Euler) or 'sde' (Flow-SDE)."),
    eta: float = typer.Option(0.7, "--eta", min=0.0, help="Noise level of the SDE sampler."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
) -> None:
    """Sample images for each prompt and write them as a labelled grid (one row per prompt)."""
    if sampler not in ("ode", "sde"):
        raise typer.BadParameter(f"must be 'ode' or 'sde', got {sampler!r}", param_hint="--sampler")
    try:
        t2i = TinyT2I.from_pretrained(model, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    prompts = [p for p in prompt for _ in range(num)]
    images = t2i.sample(prompts, num_steps=steps, sampler=sampler, eta=eta, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, list(prompt), num).save(out)
    typer.echo(f"wrote {len(prompts)} images to {out}")
