"""Build a CLIP BPE tokenizer offline from the vocabulary file that open_clip ships.

No hub access is needed: open_clip bundles OpenAI CLIP's byte-level BPE merges
(`bpe_simple_vocab_16e6.txt.gz`). We write them out as the `vocab.json` + `merges.txt` pair that
transformers' `CLIPTokenizer` reads, so the tiny model's tokenizer loads through the same
`from_pretrained` path as the CLIP tokenizers of SD3.5 and FLUX.

`num_merges` keeps only the first (most frequent) merges: the vocabulary becomes
256 byte tokens + 256 end-of-word byte tokens + `num_merges` merged tokens + 2 specials. Any text
still tokenizes (unmerged pieces fall back to bytes); a smaller vocabulary just keeps the jointly
trained text encoder's embedding table, and so the shipped weights, small.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_NUM_MERGES = 49152 - 256 - 2  # what OpenAI CLIP (and open_clip's default tokenizer) use
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def open_clip_bpe_path() -> Path:
    """Path of the BPE merges file bundled with the installed open_clip package."""
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as err:  # open_clip_torch is a core dependency; say how to get it back
        raise ImportError("building the tiny model's tokenizer needs open_clip: pip install open_clip_torch") from err
    path = Path(default_bpe())
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open_clip_torch")
    return path


def build_clip_tokenizer(save_dir: str | Path, num_merges: int = 4096, model_max_length: int = 16) -> CLIPTokenizer:
    """Write vocab.json/merges.txt built from open_clip's BPE file into `save_dir` and load them.

    The token order matches CLIP's: bytes, bytes + '</w>', merged tokens in merge order, then
    <|startoftext|> and <|endoftext|> (so with all merges the ids equal OpenAI CLIP's).
    """
    if not 0 <= num_merges <= CLIP_NUM_MERGES:
        raise ValueError(f"num_merges must be in [0, {CLIP_NUM_MERGES}], got {num_merges}")
    if model_max_length < 3:
        raise ValueError(f"model_max_length must be >= 3 (start, one token, end), got {model_max_length}")
    with gzip.open(open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + num_merges]]  # line 0 is a version header
    from open_clip.tokenizer import bytes_to_unicode  # CLIP's reversible byte -> printable-character map

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}, ensure_ascii=False))
    (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab_file=str(save_dir / "vocab.json"),
        merges_file=str(save_dir / "merges.txt"),
        model_max_length=model_max_length,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,  # CLIP pads with its end token; SD3 does the same
    )
    tokenizer.save_pretrained(save_dir)
    return tokenizer
