"""Image grids a person looks at: fixed prompts, fixed seeds, ODE sampling, one row per prompt.

Video models' samples (B, F, 3, H, W) show as strips of their frames in the grid, and as one animated GIF each.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from mogen.config import SamplerConfig
from mogen.models.contract import FlowPolicy
from mogen.sampling import timesteps
from mogen.trajectory import sample_trajectory

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@torch.no_grad()
def generate(
    policy: FlowPolicy, prompts: list[str], num_steps: int, shift: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Deterministic ODE samples (B, 3, H, W) in [0, 1], or videos (B, F, 3, H, W): the same noise gives the same image."""
    cond = policy.encode_prompts(prompts)
    x = torch.randn((len(prompts), *policy.latent_shape), generator=generator, device=device, dtype=torch.float32)
    x = sample_trajectory(lambda x_t, t: policy.velocity(x_t, t, cond), x, timesteps(num_steps, shift, device=device))
    return policy.decode(x).float().clamp(0, 1)


def frame_strips(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) videos -> (B, 3, H, F * W) images: each video's frames side by side, left to right."""
    return videos.permute(0, 2, 3, 1, 4).flatten(3)


def save_gifs(videos: torch.Tensor, out_dir: Path, stem: str = "sample", fps: int = 8) -> list[Path]:
    """Write each (F, 3, H, W) video of `videos` as an animated, looping GIF `<stem>-<i>.gif`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = (videos.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    paths = []
    for i, video in enumerate(frames):
        first, *rest = [Image.fromarray(frame) for frame in video]
        path = out_dir / f"{stem}-{i}.gif"
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        paths.append(path)
    return paths


def labelled_grid(images: torch.Tensor, labels: list[str], per_row: int, scale: int = 3) -> Image.Image:
    """Rows of `per_row` images (videos: strips of their frames), each row labelled with its prompt on the left."""
    if images.ndim == 5:
        images = frame_strips(images)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w = pixels.shape[1] * scale, pixels.shape[2] * scale
    rows = len(labels)
    try:
        font = ImageFont.truetype(FONT, 12)
    except OSError:
        font = ImageFont.load_default()
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)) for label in labels) + 10
    grid = Image.new("RGB", (label_w + per_row * (w + 2), rows * (h + 2)), (170, 170, 170))  # grey gaps frame tiles
    draw = ImageDraw.Draw(grid)
    draw.rectangle((0, 0, label_w - 1, grid.height), fill="white")
    for r, label in enumerate(labels):
        draw.text((4, r * (h + 2) + h // 2 - 6), label, fill="black", font=font)
        for c in range(per_row):
            tile = Image.fromarray(pixels[r * per_row + c]).resize((w, h), Image.NEAREST)
            grid.paste(tile, (label_w + c * (w + 2), r * (h + 2)))
    return grid


def sample_grid(policy: FlowPolicy, prompts: list[str], sampler: SamplerConfig, seed: int, per_prompt: int = 4) -> Image.Image:
    """Sample `per_prompt` images for each prompt with fixed seeds: the labelled grid a run saves every few steps."""
    device = next(policy.transformer.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(per_prompt)]
    images = generate(policy, repeated, sampler.num_steps, sampler.shift, generator, device)
    return labelled_grid(images, prompts, per_prompt)


def write_samples(policy: FlowPolicy, prompts: list[str], per_prompt: int, num_steps: int, shift: float, seed: int, out: Path) -> list[Path]:
    """ODE-sample `per_prompt` images (or videos) per prompt; write the labelled grid to `out` and, for a video
    model, one looping GIF per prompt next to it (`<out stem>-<prompt index>.gif`, its samples side by side)."""
    device = next(policy.transformer.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    images = generate(policy, [p for p in prompts for _ in range(per_prompt)], num_steps, shift, generator, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, prompts, per_prompt, scale=4).save(out)
    if images.ndim != 5:
        return [out]
    rows = images.unflatten(0, (len(prompts), per_prompt))  # (P, n, F, 3, H, W)
    return [out, *save_gifs(rows.permute(0, 2, 3, 4, 1, 5).flatten(4), out.parent, stem=out.stem)]  # (P, F, 3, H, n W)
