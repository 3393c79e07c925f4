"""Where model-backed scorers find their weights. Nothing here downloads: every lookup is local.

A weights argument is one of
  - a local file or directory path (``~`` expanded),
  - ``hf://ORG/REPO/FILE`` for one file of a hub repository already in the local Hugging Face cache
    (fill the cache once with ``huggingface-cli download ORG/REPO FILE`` on a machine with internet),
  - for transformers models, a bare hub id ``ORG/REPO`` already in the local cache.
A missing file raises `MissingWeightsError`, which names the scorer, the path and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from reward_zoo.errors import MissingWeightsError

HF_PREFIX = "hf://"


def weights_dir() -> Path:
    """Default folder for weights that have no hub home: $MOGEN_REWARD_WEIGHTS or ~/.cache/mogen/rewards."""
    return Path(os.environ.get("MOGEN_REWARD_WEIGHTS", "~/.cache/mogen/rewards")).expanduser()


def _cached_hub_file(repo_id: str, filename: str) -> str | None:
    import huggingface_hub

    found = huggingface_hub.try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def _split_hf(spec: str) -> tuple[str, str]:
    parts = spec[len(HF_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"'{spec}' is not of the form hf://ORG/REPO/FILE")
    return f"{parts[0]}/{parts[1]}", parts[2]


def locate_file(spec: str) -> str | None:
    """The local path `spec` refers to, or None when it is not on this machine."""
    if spec.startswith(HF_PREFIX):
        return _cached_hub_file(*_split_hf(spec))
    path = Path(spec).expanduser()
    return str(path) if path.is_file() else None


def resolve_file(scorer: str, spec: str, what: str, how: str) -> str:
    """`locate_file`, raising `MissingWeightsError` when the file is absent."""
    found = locate_file(spec)
    if found is None:
        if spec.startswith(HF_PREFIX):
            repo, filename = _split_hf(spec)
            how = f"{how} (or fill the cache: huggingface-cli download {repo} {filename})"
        raise MissingWeightsError(scorer, what, spec, how)
    return found


def locate_pretrained_dir(spec: str) -> str | None:
    """A transformers `from_pretrained` source: a local directory, or a hub id present in the local cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if spec.count("/") != 1 or path.exists():
        return None
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return huggingface_hub.snapshot_download(spec, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def resolve_pretrained_dir(scorer: str, spec: str, what: str, how: str) -> str:
    found = locate_pretrained_dir(spec)
    if found is None:
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            how = f"{how} (or fill the cache: huggingface-cli download {spec})"
        raise MissingWeightsError(scorer, what, spec, how)
    return found


def open_clip_tag_file(model_name: str, tag: str) -> tuple[str, bool] | None:
    """For an open_clip pretrained tag ('openai', 'laion2b_s32b_b79k', ...): (hf:// spec, quick_gelu), or None.

    open_clip would download the tag's file; we only look it up in the local hub cache.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg or not cfg.get("hf_hub"):
        return None
    hub = cfg["hf_hub"]
    if hub.endswith("/"):  # open_clip's convention: a repo id with a trailing slash means its default file
        repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
    else:
        repo, filename = os.path.split(hub)
    for candidate in (filename.replace("open_clip_pytorch_model.bin", "open_clip_model.safetensors"), filename):
        if _cached_hub_file(repo, candidate):
            return f"{HF_PREFIX}{repo}/{candidate}", bool(cfg.get("quick_gelu", False))
    return f"{HF_PREFIX}{repo}/{filename}", bool(cfg.get("quick_gelu", False))
