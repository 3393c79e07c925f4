"""Rule-based, GenEval-like verifier: score images against toy-world prompts from pixels alone.

The prompt text is parsed (`scenes.parse_prompt`), so any prompt of the grammar works, including
held-out and user-written ones. Per image:

- objects: pixels far from the background colour (median of the border) are foreground; 8-connected
  components below `min_area` are specks and ignored; a component larger than 1.5x the nominal
  object side is "junk" (merged objects, paint) and counts against `count`.
- colour of a component: each pixel is classified to the nearest palette hue (saturation and value
  >= 0.35, hue within 30 degrees, else no colour); the component's colour is the majority among its
  coloured pixels if it has >= half of their votes and they cover >= a quarter of the component.
- shape of a component (the shapes are drawn upright): an upward triangle has little mass in its
  top half (top/bottom row mass ~0.3 vs 1.0) and fills ~0.5 of its bbox; a square fills ~1.0, a
  circle ~0.78 (pi/4).
- text: real OCR (tesseract, single-character page segmentation) on the contrast-normalised,
  upscaled (to 128 px) max-channel image; the background colour is the majority pixel colour.

Scores, each in [0, 1], NaN where the attribute does not apply to the prompt:

| attribute | count prompts            | position prompts                      | text prompts |
|-----------|--------------------------|---------------------------------------|--------------|
| count     | min(k, n) / max(k+junk, n) | same with n = 2                     | NaN          |
| color     | fraction of objects of the colour | fraction of the 2 matched objects with their colour | background colour right |
| shape     | fraction of objects of the kind   | same for kinds                        | NaN          |
| position  | NaN                      | 1 iff both objects found exactly and the relation holds (centroid offset > 0.1 * size) | NaN |
| text      | NaN                      | NaN                                   | 1 iff OCR reads the letter (= 1 - edit distance for one character) |

`overall` is the mean of the applicable attributes (partial credit, useful as an RL reward);
`all_correct` is GenEval's strict criterion: 1 iff every applicable attribute is exactly 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from mogen.toyworld.scenes import COLORS, Item, PromptSpec, object_size, parse_prompt

ATTRIBUTES = ("count", "color", "shape", "position", "text")
_COLOR_NAMES = tuple(COLORS)
FOREGROUND_THRESHOLD = 0.4  # max channel difference from the background; ~half the palette contrast, so blur keeps shapes
MIN_SATURATION = 0.35
MIN_VALUE = 0.35
MAX_HUE_DISTANCE = 30.0  # degrees
OCR_SIDE = 128  # px the image is upscaled to before OCR


@dataclass(frozen=True)
class Component:
    """One connected foreground region seen in an image. color/kind are None when unrecognised."""

    color: str | None
    kind: str | None
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    centroid: tuple[float, float]  # x, y
    area: int


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], for rgb (..., 3) in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    chroma = value - rgb.min(-1)
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(value == r, ((g - b) / safe) % 6, np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    saturation = chroma / np.where(value > 0, value, 1.0)
    return hue * 60.0, saturation, value


_PALETTE_HUES = _rgb_to_hsv(np.array(list(COLORS.values()), dtype=np.float64) / 255.0)[0]


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """Palette index per pixel (H, W), or -1 where the pixel is grey/dark/off-palette."""
    hue, saturation, value = _rgb_to_hsv(image)
    diff = np.abs(hue[..., None] - _PALETTE_HUES)
    dist = np.minimum(diff, 360.0 - diff)  # circular hue distance
    nearest = dist.argmin(-1)
    ok = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE) & (dist.min(-1) <= MAX_HUE_DISTANCE)
    return np.where(ok, nearest, -1)


def _classify_shape(mask: np.ndarray) -> str | None:
    """Kind of an upright shape from its bbox-cropped mask, or None if it looks like none of them."""
    h, w = mask.shape
    if not 0.6 <= h / w <= 1 / 0.6:
        return None
    fill = mask.sum() / (h * w)  # square 1.0, circle ~pi/4, triangle ~0.5
    rows = mask.sum(1)
    top_bottom = rows[: h // 2].sum() / max(1, rows[(h + 1) // 2 :].sum())  # triangle ~0.3, others ~1
    if top_bottom < 0.65 and fill < 0.75:
        return "triangle"
    if fill >= 0.89:
        return "square"
    if fill >= 0.62:
        return "circle"
    return None


def find_objects(image: np.ndarray, min_area: int | None = None) -> tuple[list[Component], int]:
    """(objects, number of junk regions) in one (H, W, 3) float image in [0, 1] of an object scene."""
    size = image.shape[0]
    nominal = object_size(size)
    min_area = max(3, round(0.15 * nominal**2)) if min_area is None else min_area
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.abs(image - background).max(-1) > FOREGROUND_THRESHOLD
    labels, n = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [], 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    pixel_colors = classify_pixels(image)
    objects, junk = [], 0
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        area = int(areas[index])
        if area < min_area:
            continue
        ys, xs = slices
        if max(ys.stop - ys.start, xs.stop - xs.start) > 1.5 * nominal:
            junk += 1
            continue
        mask = labels[slices] == index
        votes = np.bincount(pixel_colors[slices][mask] + 1, minlength=len(COLORS) + 1)[1:]
        # Blurred or decoded objects have dark/pale rims: vote among the pixels that have a colour.
        decided = votes.max() >= 0.5 * votes.sum() and votes.sum() >= 0.25 * area
        color = _COLOR_NAMES[int(votes.argmax())] if decided else None
        yy, xx = np.nonzero(mask)
        centroid = (float(xx.mean() + xs.start), float(yy.mean() + ys.start))
        bbox = (xs.start, ys.start, xs.stop, ys.stop)
        objects.append(Component(color, _classify_shape(mask), bbox, centroid, area))
    return objects, junk


# Single-glyph OCR confusions that cannot be told apart without context; the alphabet is A-Z.
_OCR_CONFUSIONS = str.maketrans({"|": "I", "l": "I", "1": "I", "0": "O", "5": "S", "8": "B", "2": "Z", "$": "S"})


def read_letter(image: np.ndarray) -> str:
    """OCR one dark glyph on a coloured background; returns the normalised reading ('' if none).

    The max channel makes every palette background bright and the black letter dark; dividing by
    its 90th percentile makes the background white whatever its hue (green is darker than yellow),
    and bicubic upscaling to OCR_SIDE px brings the glyph (~0.6 of the side) to a height that
    tesseract's recogniser reads reliably (measured: 0/312 errors at 32x32, LANCZOS had 4).
    """
    value = image.max(-1)
    value = np.clip(value / max(float(np.percentile(value, 90)), 1e-3), 0.0, 1.0)
    gray = Image.fromarray((value * 255).round().astype(np.uint8))
    gray = gray.resize((OCR_SIDE, OCR_SIDE), Image.BICUBIC)
    padded = Image.new("L", (OCR_SIDE * 3 // 2, OCR_SIDE * 3 // 2), 255)
    padded.paste(gray, (OCR_SIDE // 4, OCR_SIDE // 4))
    try:  # imported here so scene generation works without the OCR extra installed
        import pytesseract

        raw = pytesseract.image_to_string(padded, config="--psm 10")
    except (ImportError, OSError) as err:  # pytesseract.TesseractNotFoundError is an OSError
        raise RuntimeError(
            f"toy-world text prompts need tesseract OCR ({err}); install it with "
            "`apt-get install tesseract-ocr` and `pip install pytesseract` (or `pip install mogen[ocr]`)"
        ) from None
    text = "".join(raw.split()).translate(_OCR_CONFUSIONS).upper()
    return "".join(ch for ch, _ in itertools.groupby(text))  # LSTM single-char mode may repeat a glyph


def _relation_holds(relation: str, a: Component, b: Component, margin: float) -> bool:
    if relation == "left of":
        return a.centroid[0] + margin < b.centroid[0]
    return a.centroid[1] + margin < b.centroid[1]  # "above": image y grows downwards


def _score_objects(image: np.ndarray, spec: PromptSpec) -> dict[str, float]:
    objects, junk = find_objects(image)
    n = spec.count
    k = len(objects)
    scores = {"count": min(k, n) / max(k + junk, n)}
    if spec.task == "count":
        target = spec.items[0]
        scores["color"] = sum(o.color == target.color for o in objects) / k if k else 0.0
        scores["shape"] = sum(o.kind == target.kind for o in objects) / k if k else 0.0
        return scores
    a, b = spec.items

    def agreement(o: Component | None, it: Item) -> int:
        return 0 if o is None else int(o.color == it.color) + int(o.kind == it.kind)

    # The assignment of two components to (a, b) that agrees best with the prompt (first one on
    # ties); None stands in for a missing object when fewer than two were found.
    pool = [*objects, None, None]
    oa, ob = max(itertools.permutations(pool, 2), key=lambda p: agreement(p[0], a) + agreement(p[1], b))
    scores["color"] = (int(oa is not None and oa.color == a.color) + int(ob is not None and ob.color == b.color)) / 2
    scores["shape"] = (int(oa is not None and oa.kind == a.kind) + int(ob is not None and ob.kind == b.kind)) / 2
    exact = agreement(oa, a) == 2 and agreement(ob, b) == 2
    scores["position"] = float(exact and _relation_holds(spec.relation, oa, ob, 0.1 * image.shape[0]))
    return scores


def _score_text(image: np.ndarray, spec: PromptSpec) -> dict[str, float]:
    votes = np.bincount(classify_pixels(image).ravel() + 1, minlength=len(COLORS) + 1)[1:]
    background = _COLOR_NAMES[int(votes.argmax())] if votes.max() >= 0.5 * image.shape[0] * image.shape[1] else None
    return {"color": float(background == spec.background), "text": float(read_letter(image) == spec.letter)}


def verify_array(image: np.ndarray, prompt: str | PromptSpec) -> dict[str, float]:
    """Scores of one (H, W, 3) float image in [0, 1]; keys are the applicable attributes only."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    return _score_text(image, spec) if spec.task == "text" else _score_objects(image, spec)


def verify(images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Score a batch (B, 3, H, W) in [0, 1] (any device) against its prompts.

    Returns float32 tensors of shape (B,) on the images' device for each of ATTRIBUTES (NaN where
    not applicable), plus `overall` (mean of applicable attributes) and `all_correct` (0/1).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"verify: images must be a float tensor (B, 3, H, W) in [0, 1], got {shape}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"verify: images must be square, got H x W = {images.shape[-2]} x {images.shape[-1]}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"verify: got {images.shape[0]} images but {len(prompts)} prompts")
    specs = []
    for i, prompt in enumerate(prompts):
        try:
            specs.append(parse_prompt(prompt))
        except ValueError as err:
            raise ValueError(f"verify: prompts[{i}]: {err}") from None
    arrays = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    table = np.full((len(specs), len(ATTRIBUTES)), math.nan, dtype=np.float32)
    for i, (array, spec) in enumerate(zip(arrays, specs)):
        for name, value in verify_array(array, spec).items():
            table[i, ATTRIBUTES.index(name)] = value
    applicable = ~np.isnan(table)
    overall = np.nansum(table, axis=1) / applicable.sum(1)
    all_correct = np.all(np.where(applicable, table == 1.0, True), axis=1).astype(np.float32)
    result = {name: table[:, j] for j, name in enumerate(ATTRIBUTES)}
    result.update(overall=overall.astype(np.float32), all_correct=all_correct)
    return {name: torch.from_numpy(np.ascontiguousarray(v)).to(images.device) for name, v in result.items()}
