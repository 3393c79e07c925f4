"""Score a folder of images with one scorer (what `mogen rewards score` runs).

Prompts file formats:
  - JSONL (`.jsonl`): one object per line, {"file": "img_000.png", "prompt": "...", "metadata": {...}}
    ("metadata" optional); scores exactly the listed files, in the listed order, paths relative to the folder.
  - any other suffix: plain text, line i is the prompt of the i-th image in sorted filename order
    (.png .jpg .jpeg .webp .bmp); the number of lines must equal the number of images.
  - no prompts file: every prompt is "" (fine for prompt-free scorers: compressibility, aesthetic, vivid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from reward_zoo.base import Scorer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class FolderItem:
    file: str
    prompt: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(images_dir: Path, prompts_file: Path) -> list[FolderItem]:
    items = []
    for number, line in enumerate(prompts_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{prompts_file}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict) or not isinstance(row.get("file"), str) or not isinstance(row.get("prompt"), str):
            expected = '{"file": "...", "prompt": "..."}'
            raise ValueError(f"{prompts_file}:{number}: expected {expected}, got {line.strip()[:80]}")
        if not (images_dir / row["file"]).is_file():
            raise ValueError(f"{prompts_file}:{number}: image {images_dir / row['file']} does not exist")
        metadata = row.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"{prompts_file}:{number}: metadata must be an object")
        items.append(FolderItem(row["file"], row["prompt"], metadata))
    if not items:
        raise ValueError(f"{prompts_file}: no entries")
    return items


def read_folder(images_dir: str | Path, prompts_file: str | Path | None = None) -> list[FolderItem]:
    """The images to score with their prompts, following the rules in the module docstring."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"--images {images_dir}: not a directory")
    if prompts_file is not None:
        prompts_file = Path(prompts_file)
        if not prompts_file.is_file():
            raise ValueError(f"--prompts {prompts_file}: no such file")
        if prompts_file.suffix == ".jsonl":
            return _read_jsonl(images_dir, prompts_file)
    files = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--images {images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if prompts_file is None:
        return [FolderItem(f, "") for f in files]
    prompts = prompts_file.read_text(encoding="utf-8").splitlines()
    if len(prompts) != len(files):
        raise ValueError(
            f"--prompts {prompts_file}: {len(prompts)} lines for {len(files)} images in {images_dir}; "
            "give one line per image in sorted filename order, or a .jsonl with file and prompt per line"
        )
    return [FolderItem(f, p) for f, p in zip(files, prompts)]


def load_image(path: Path) -> torch.Tensor:
    """An image file as a float (3,H,W) tensor in [0,1]."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def score_folder(scorer: Scorer, images_dir: str | Path, items: list[FolderItem], batch_size: int = 16) -> list[dict]:
    """One row per item: file, prompt, score (None if failed), failed, error, and the scorer's details/texts.

    Consecutive images of the same size are scored together, up to `batch_size` at a time.
    """
    images_dir, rows = Path(images_dir), []
    start = 0
    while start < len(items):
        first = load_image(images_dir / items[start].file)
        batch, end = [first], start + 1
        while end < len(items) and end - start < batch_size:
            image = load_image(images_dir / items[end].file)
            if image.shape != first.shape:
                break
            batch.append(image)
            end += 1
        chunk = items[start:end]
        result = scorer(torch.stack(batch).to(scorer.device), [i.prompt for i in chunk], [i.metadata for i in chunk])
        for j, item in enumerate(chunk):
            failed = bool(result.failed[j])
            row = {"file": item.file, "prompt": item.prompt, "score": None if failed else float(result.scores[j])}
            row.update({"failed": failed, "error": result.errors.get(j)})
            row.update({k: float(v[j]) for k, v in result.details.items()})
            row.update({k: v[j] for k, v in result.texts.items()})
            rows.append(row)
        start = end
    return rows
