"""Render toy-world scenes with PIL, and the batch generator used to train on the world.

Shapes are drawn without anti-aliasing (crisp edges, exactly the palette colours) so ground truth
is unambiguous; the letter uses PIL's default anti-aliased text in DejaVu Sans Bold.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mogen.toyworld.scenes import COLORS, LETTER_RGB, Scene, sample_scenes

FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@lru_cache(maxsize=8)
def _font(pixel_size: int) -> ImageFont.FreeTypeFont:
    if not FONT_PATH.exists():
        raise FileNotFoundError(
            f"toy-world font not found at {FONT_PATH}; install it with `apt-get install fonts-dejavu-core`"
        )
    return ImageFont.truetype(str(FONT_PATH), pixel_size)


def letter_font_size(size: int) -> int:
    """Cap height ~0.6 of the image: big enough to read at 32x32, small enough to fit with jitter."""
    return round(0.8 * size)


def render_scene(scene: Scene) -> Image.Image:
    """Draw one scene as an RGB PIL image of scene.size x scene.size."""
    image = Image.new("RGB", (scene.size, scene.size), scene.background_rgb)
    draw = ImageDraw.Draw(image)
    if scene.spec.task == "text":
        cx = scene.size / 2 + scene.letter_offset[0]
        cy = scene.size / 2 + scene.letter_offset[1]
        # anchor "mm": the glyph's middle (horizontally) and the font's middle (vertically) at (cx, cy).
        draw.text((cx, cy), scene.spec.letter, fill=LETTER_RGB, font=_font(letter_font_size(scene.size)), anchor="mm")
        return image
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        rgb = COLORS[obj.color]
        if obj.kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        else:  # upward isosceles triangle filling the bbox
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=rgb)
    return image


def render_batch(scenes: list[Scene], device: torch.device | str | None = None) -> torch.Tensor:
    """Render scenes into a float32 tensor (B, 3, H, W) in [0, 1] on `device`."""
    if not scenes:
        raise ValueError("render_batch got an empty list of scenes")
    arrays = np.stack([np.asarray(render_scene(s), dtype=np.uint8) for s in scenes])
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    return images.to(device=device, dtype=torch.float32).div_(255.0)


def sample_batch(
    batch_size: int,
    rng: np.random.Generator | torch.Generator | int,
    split: str = "train",
    tasks: tuple[str, ...] | None = None,
    size: int = 32,
    device: torch.device | str | None = None,
) -> tuple[list[str], torch.Tensor]:
    """(prompts, images) for training: images float32 (B, 3, size, size) in [0, 1].

    Deterministic given the seed or the generator's state; pass the same numpy or torch Generator
    across calls to stream fresh batches (a torch Generator is advanced by one draw per batch).
    """
    if isinstance(rng, torch.Generator):
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    elif isinstance(rng, int):
        rng = np.random.default_rng(rng)
    scenes = sample_scenes(batch_size, rng, split=split, tasks=tasks, size=size)
    return [s.prompt for s in scenes], render_batch(scenes, device)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 4) -> Path:
    """Save a (B, 3, H, W) batch in [0, 1] as one PNG grid (nearest upscaling) for looking at."""
    images = images.detach().float().clamp(0, 1).cpu()
    b, _, h, w = images.shape
    nrow = -(-b // ncol)
    grid = torch.ones(3, nrow * (h + 1), ncol * (w + 1)) * 0.5
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[:, r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i]
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    image.save(path)
    return path
