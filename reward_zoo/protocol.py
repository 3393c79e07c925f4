"""The JSON wire format of `mogen serve-reward` (protocol 1), shared by the server and the `remote` scorer.

Plain JSON over HTTP, never pickle: a reward server cannot make its client run code, nor the reverse.

POST /score
    request   {"images":   [str, ...],     # base64 of an 8-bit RGB PNG per image; all the same size
               "prompts":  [str, ...],     # optional, default "" per image
               "metadata": [{...}, ...]}   # optional JSON objects, default {} per image
    response  {"reward":  str,                       # the served scorer's name
               "scores":  [float | null, ...],       # null where failed
               "failed":  [bool, ...],
               "details": {key: [float | null, ...]},
               "texts":   {key: [str, ...]},
               "errors":  {"<index>": str}}          # why a sample failed
GET /health
    response  {"protocol": 1, "reward", "description", "higher_is_better", "kwargs", "weights_present",
               "weights", "device", "dtype", "max_request_bytes", "max_batch"}
Errors are {"error": "one line"} with status 400 (bad request), 401 (missing or wrong bearer token),
404 (unknown path), 411 / 413 (no or too large Content-Length) or 500 (the scorer raised).

Images travel as 8-bit PNG (lossless): a served scorer sees exactly the pixels an in-process scorer sees
after `to_pil`/`to_uint8_hwc`; scorers that read float pixels see them rounded to multiples of 1/255.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from reward_zoo.base import ScoreResult, to_pil

PROTOCOL_VERSION = 1


def encode_images(images: torch.Tensor) -> list[str]:
    """(B,3,H,W) floats in [0,1] -> base64 PNG strings (compress level 1: lossless, cheap to encode)."""
    encoded = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def decode_images(encoded: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """base64 PNG (or any PIL-readable format) strings -> (B,3,H,W) float32 in [0,1]; ValueError names the index."""
    arrays = []
    for i, item in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(base64.b64decode(item, validate=True))) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except (binascii.Error, OSError, TypeError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"images[{i}] is not a base64-encoded image ({error})") from None
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images must all have the same size, got {sorted({a.shape[:2] for a in arrays})}")
    pixels = torch.from_numpy(np.stack(arrays)).to(device)
    return pixels.permute(0, 3, 1, 2).float() / 255.0


def encode_request(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": encode_images(images), "prompts": list(prompts), "metadata": list(metadata)}


def decode_request(body: Any, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[str], list[dict]]:
    """A /score request body -> (images, prompts, metadata); ValueError with a one-line reason if malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list) or not body["images"]:
        raise ValueError('the body must be a JSON object with a non-empty "images" list of base64 PNGs')
    n = len(body["images"])
    prompts = body.get("prompts") or [""] * n
    metadata = body.get("metadata") or [{} for _ in range(n)]
    if not (isinstance(prompts, list) and len(prompts) == n and all(isinstance(p, str) for p in prompts)):
        raise ValueError(f'"prompts" must be a list of {n} strings')
    if not (isinstance(metadata, list) and len(metadata) == n and all(isinstance(m, dict) for m in metadata)):
        raise ValueError(f'"metadata" must be a list of {n} objects')
    return decode_images(body["images"], device), prompts, metadata


def _floats(values: torch.Tensor) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values.detach().float().cpu().tolist()]


def encode_result(reward: str, result: ScoreResult) -> dict[str, Any]:
    """A ScoreResult -> the /score response body (strict JSON: NaN becomes null)."""
    return {
        "reward": reward,
        "scores": _floats(result.scores),
        "failed": result.failed.cpu().tolist(),
        "details": {k: _floats(v) for k, v in result.details.items()},
        "texts": {k: list(v) for k, v in result.texts.items()},
        "errors": {str(i): e for i, e in result.errors.items()},
    }


def _number_list(values: Any, n: int, field: str) -> list[float]:
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise ValueError(f'"{field}" must hold {n} values (one per image), got {got}')
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise ValueError(f'"{field}" must hold numbers or null')
    return [float("nan") if v is None else float(v) for v in values]


def decode_result(body: Any, n: int, device: torch.device | str = "cpu") -> ScoreResult:
    """A /score response body for n images -> ScoreResult; ValueError with a one-line reason if malformed."""
    if not isinstance(body, dict):
        raise ValueError(f"the response must be a JSON object, got {type(body).__name__}")
    scores = torch.tensor(_number_list(body.get("scores"), n, "scores"), dtype=torch.float32, device=device)
    failed = body.get("failed", [False] * n)
    if not (isinstance(failed, list) and len(failed) == n and all(isinstance(f, bool) for f in failed)):
        raise ValueError(f'"failed" must be a list of {n} booleans')
    details = body.get("details") or {}
    texts = body.get("texts") or {}
    errors = body.get("errors") or {}
    if not (isinstance(details, dict) and isinstance(texts, dict) and isinstance(errors, dict)):
        raise ValueError('"details", "texts" and "errors" must be JSON objects')
    for key, values in texts.items():
        if not (isinstance(values, list) and len(values) == n and all(isinstance(s, str) for s in values)):
            raise ValueError(f'"texts.{key}" must be a list of {n} strings')
    try:
        error_map = {int(i): str(e) for i, e in errors.items()}
    except ValueError:
        raise ValueError('"errors" keys must be sample indices') from None
    return ScoreResult(
        scores=scores,
        failed=torch.tensor(failed, dtype=torch.bool, device=device),
        details={
            k: torch.tensor(_number_list(v, n, f"details.{k}"), dtype=torch.float32, device=device)
            for k, v in details.items()
        },
        texts={k: list(v) for k, v in texts.items()},
        errors={i: e for i, e in error_map.items() if 0 <= i < n},
    )
