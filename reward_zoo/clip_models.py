"""open_clip-backed scorers: CLIPScore, HPS v2.1 and the LAION aesthetic predictor.

Each builds the open_clip architecture with `pretrained=None` (so open_clip never downloads) and then
loads a local checkpoint itself: HPS v2.1 is a ViT-H-14 whose state-dict keys match open_clip's, so
the `hpsv2` package (which re-reads its checkpoint on every call and fetches a base model first) is
not needed. `model_name` is an open_clip architecture ('ViT-L-14') or the path of an open_clip JSON
config file (how the tests build tiny random-weight models through this same code path).

Images are preprocessed as tensors on the scorer's device, like open_clip's eval transform:
bicubic resize of the shorter side to the model's size, center crop, per-channel normalization.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reward_zoo.base import Scorer, ScorerConfigError
from reward_zoo.weights import HF_PREFIX, locate_file, open_clip_tag_file, resolve_file, weights_dir


def clip_pixels(
    images: torch.Tensor, size: int, mean: Any, std: Any, dtype: torch.dtype, crop: int | None = None
) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> normalized (B,3,crop,crop): shorter side to `size` (bicubic), center crop.

    `crop` defaults to `size` (open_clip's eval transform); transformers' CLIPImageProcessor has both.
    """
    crop = crop or size
    x = images.float()
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(crop, round(height * scale)), max(crop, round(width * scale))
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def _is_tag(checkpoint: str) -> bool:
    """open_clip tags ('openai', 'laion2b_s32b_b79k') have no dot or slash; files and hf:// specs do."""
    return "/" not in checkpoint and "." not in checkpoint


def _resolve_open_clip_checkpoint(scorer: str, model_name: str, checkpoint: str, how: str) -> tuple[str, bool]:
    """(local file, quick_gelu) for a checkpoint given as a file, an hf:// spec or an open_clip tag."""
    quick_gelu = False
    if _is_tag(checkpoint):
        import open_clip

        tagged = open_clip_tag_file(model_name, checkpoint)
        if tagged is None:
            raise ScorerConfigError(
                f"reward '{scorer}': checkpoint {checkpoint!r} is not a file path, an hf://ORG/REPO/FILE spec, or an "
                f"open_clip tag of {model_name} (its tags: {open_clip.list_pretrained_tags_by_model(model_name)})"
            )
        checkpoint, quick_gelu = tagged
    return resolve_file(scorer, checkpoint, f"{model_name} checkpoint", how), quick_gelu


def _architecture(scorer: str, model_name: str) -> str:
    """Register a JSON config file with open_clip and return its architecture name."""
    import open_clip

    if model_name.endswith(".json"):
        path = Path(model_name).expanduser()
        if not path.is_file():
            raise ScorerConfigError(f"reward '{scorer}': model_name config file {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if model_name not in open_clip.list_models():
        raise ScorerConfigError(
            f"reward '{scorer}': unknown open_clip model_name {model_name!r}; use an open_clip architecture "
            "(open_clip.list_models(), e.g. 'ViT-L-14', 'ViT-H-14') or the path of an open_clip JSON config"
        )
    return model_name


@contextmanager
def _quiet_random_init_warning():
    """open_clip warns 'initialized randomly' for pretrained=None; we load the weights right after."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def load_open_clip(scorer: str, model_name: str, checkpoint: str, how: str):
    """Build an open_clip model offline and load `checkpoint` into it (safetensors or torch weights_only)."""
    import open_clip

    architecture = _architecture(scorer, model_name)
    path, quick_gelu = _resolve_open_clip_checkpoint(scorer, architecture, checkpoint, how)
    with _quiet_random_init_warning():
        model = open_clip.create_model(architecture, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False)
    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as error:  # shape asserts, missing keys, unreadable files: all mean "wrong checkpoint"
        raise ScorerConfigError(
            f"reward '{scorer}': {path} does not fit open_clip {architecture}: {type(error).__name__}: {error}"
        ) from error
    model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(architecture), open_clip.get_model_preprocess_cfg(model)


class ClipScore(Scorer):
    """cos(image embedding, text embedding) x `scale`.

    scale=1 gives the raw cosine (about 0.2-0.35 for real CLIP ViT-L/14 on matching pairs: the unit
    papers such as Flow-DPPO report); scale=100 gives the "x100" convention. No clipping at 0.
    """

    name = "clipscore"
    description = "CLIP image-text cosine similarity (open_clip, local checkpoint)"
    _default_model, _default_checkpoint = "ViT-L-14", "openai"
    _how = "pass checkpoint=PATH to open_clip weights for model_name, or cache the open_clip tag's hub file"

    def __init__(
        self,
        model_name: str | None = None,
        checkpoint: str | None = None,
        scale: float = 1.0,
        batch_size: int | None = None,
    ):
        super().__init__(batch_size)
        self.model_name = model_name or self._default_model
        self.scale = float(scale)
        self.model, self.tokenizer, cfg = load_open_clip(
            self.name, self.model_name, checkpoint or self._default_checkpoint, self._how
        )
        size = cfg["size"]
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = cfg["mean"], cfg["std"]

    @classmethod
    def weights_status(cls, model_name: str | None = None, checkpoint: str | None = None, **_: Any) -> tuple[bool, str]:
        model_name, checkpoint = model_name or cls._default_model, checkpoint or cls._default_checkpoint
        if _is_tag(checkpoint):
            tagged = open_clip_tag_file(model_name, checkpoint)
            checkpoint = tagged[0] if tagged else checkpoint
        return locate_file(checkpoint) is not None, checkpoint

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def embed(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalized float32 image and text embeddings, (B, D) each."""
        pixels = clip_pixels(images.to(self.device), self.image_size, self.mean, self.std, self.dtype)
        tokens = self.tokenizer(prompts).to(self.device)
        image_features = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text_features = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return image_features, text_features

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        image_features, text_features = self.embed(images, prompts)
        return self.scale * (image_features * text_features).sum(dim=-1)


class HPSv2(ClipScore):
    """Human Preference Score v2.1: cosine of a ViT-H-14 fine-tuned on human preferences (same formula)."""

    name = "hpsv2"
    description = "HPS v2.1 human preference score (open_clip ViT-H-14, local checkpoint)"
    _default_model, _default_checkpoint = "ViT-H-14", f"{HF_PREFIX}xswu/HPSv2/HPS_v2.1_compressed.pt"
    _how = "download HPS_v2.1_compressed.pt from the xswu/HPSv2 hub repository and pass checkpoint=PATH"


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP (linear layers only; the dropouts keep its state-dict keys)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


def load_aesthetic_head(path: str) -> AestheticHead:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticHead(state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)


class Aesthetic(Scorer):
    """LAION aesthetic score (about 1-10): MLP(L2-normalized CLIP ViT-L/14 image embedding); prompt unused."""

    name = "aesthetic"
    description = "LAION aesthetic predictor: MLP on CLIP ViT-L/14 image embeddings"
    _head_file = "sac+logos+ava1-l14-linearMSE.pth"

    def __init__(
        self,
        head: str | None = None,
        model_name: str = "ViT-L-14",
        checkpoint: str = "openai",
        batch_size: int | None = None,
    ):
        super().__init__(batch_size)
        how = (
            f"download {self._head_file} from the LAION improved-aesthetic-predictor repository "
            "(github.com/christophschuhmann/improved-aesthetic-predictor) and pass head=PATH "
            "or put it in $MOGEN_REWARD_WEIGHTS/aesthetic/"
        )
        head_path = resolve_file(
            self.name, head or str(weights_dir() / "aesthetic" / self._head_file), "the aesthetic MLP head", how
        )
        self.clip, _, cfg = load_open_clip(self.name, model_name, checkpoint, ClipScore._how)
        self.head = load_aesthetic_head(head_path)
        size = cfg["size"]
        self.image_size, self.mean, self.std = (size if isinstance(size, int) else size[0]), cfg["mean"], cfg["std"]
        embed_dim = self.clip.visual.output_dim
        if self.head.layers[0].in_features != embed_dim:
            raise ScorerConfigError(
                f"reward 'aesthetic': head {head_path} expects {self.head.layers[0].in_features}-d embeddings "
                f"but {model_name} gives {embed_dim}-d (the LAION head needs ViT-L-14)"
            )

    @classmethod
    def weights_status(cls, head: str | None = None, model_name: str = "ViT-L-14", checkpoint: str = "openai", **_: Any):
        head = head or str(weights_dir() / "aesthetic" / cls._head_file)
        clip_present, clip_where = ClipScore.weights_status(model_name=model_name, checkpoint=checkpoint)
        return clip_present and locate_file(head) is not None, f"{head} + {clip_where}"

    def modules(self) -> list[nn.Module]:
        return [self.clip, self.head]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        pixels = clip_pixels(images.to(self.device), self.image_size, self.mean, self.std, self.dtype)
        embedding = F.normalize(self.clip.encode_image(pixels).float(), dim=-1)
        return self.head(embedding.to(self.dtype)).float().squeeze(-1)

