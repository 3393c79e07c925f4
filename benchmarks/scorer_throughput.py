"""Images per second of each scorer that runs on this machine, one CPU thread, weights loaded once.

Also HPSv2 "as the hpsv2 package does it" (re-reading the checkpoint on every call and running the
images one by one) against reward_zoo's hpsv2 (loaded once, batched), on the same random-weight
checkpoint. No real HPS/CLIP/ImageReward weights exist here, so model-backed scorers run on random
weights: tiny configs (overhead only), open_clip ViT-B-32 for the HPSv2 comparison, and ImageReward's
real architecture (BLIP ViT-L/16 + 12-layer BERT) for a realistic per-image cost.

    python -m benchmarks.scorer_throughput          # writes benchmarks/results/scorer_throughput.json
    python -m benchmarks.scorer_throughput --full   # adds ViT-L-14 clipscore/aesthetic and ViT-H-14 HPSv2
"""

from __future__ import annotations

import json
import os
import platform
import string
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import reward_zoo

OUT = Path(__file__).parent / "results" / "scorer_throughput.json"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
WORDS = ["HELLO", "OPEN", "MOGEN", "STOP", "CAFE", "EXIT", "SALE", "K"]


def word_images(n: int, size: int = 128) -> tuple[torch.Tensor, list[str]]:
    images, prompts = [], []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        image = Image.new("RGB", (size, size), (255, 220, 0))
        draw = ImageDraw.Draw(image)
        font = ImageFont.truetype(FONT, size // 5)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        draw.text(((size - right + left) / 2 - left, (size - bottom + top) / 2 - top), word, font=font, fill=(0, 0, 0))
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
        prompts.append(f'a sign that says "{word}"')
    return torch.stack(images), prompts


def measure(scorer, images: torch.Tensor, prompts: list[str], batch_size: int) -> dict:
    """Warm up on one batch, then time one pass over all images in batches of `batch_size`."""
    scorer(images[:batch_size], prompts[:batch_size])
    start = time.perf_counter()
    failed = 0
    for i in range(0, len(images), batch_size):
        failed += int(scorer(images[i : i + batch_size], prompts[i : i + batch_size]).failed.sum())
    seconds = time.perf_counter() - start
    return {
        "images": len(images), "batch_size": batch_size, "image_size": list(images.shape[-2:]),
        "seconds": round(seconds, 3), "images_per_s": round(len(images) / seconds, 2), "failed": failed,
    }


def tiny_open_clip(root: Path) -> dict:
    import open_clip
    from safetensors.torch import save_file

    config = root / "tiny-clip.json"
    config.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(config)
    save_file(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), root / "clip.safetensors")
    from reward_zoo.clip_models import AestheticHead

    torch.save(AestheticHead(32).state_dict(), root / "head.pth")
    return {"model_name": str(config), "checkpoint": str(root / "clip.safetensors")}


def tiny_pickscore(root: Path) -> dict:
    """A 1-layer transformers CLIPModel with a character-level CLIP vocabulary, saved as PickScore would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    directory = root / "pickscore"
    directory.mkdir()
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(directory)
    return {"model": str(directory), "processor": str(directory)}


def hpsv2_package_vs_ours(root: Path, architecture: str = "ViT-B-32", n: int = 8) -> dict:
    """hpsv2's `score()` procedure vs ours, on one random-weight checkpoint of `architecture`.

    The hpsv2 1.2.0 wheel cannot be imported here (it lacks its bpe_simple_vocab_16e6.txt.gz), so its
    procedure is replayed step by step with open_clip: on every call it torch.loads the checkpoint and
    loads the state dict, then preprocesses (PIL transforms) and scores the images one at a time.
    """
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=None, output_dict=True)
    tokenizer = open_clip.get_tokenizer(architecture)
    checkpoint = root / f"hps_{architecture}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)

    def package_score(pil_images: list[Image.Image], prompt: str) -> list[float]:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # re-read on every call
        model.load_state_dict(state["state_dict"])
        model.eval()
        scores = []
        for pil in pil_images:  # one image at a time
            with torch.no_grad():
                out = model(preprocess(pil).unsqueeze(0), tokenizer([prompt]))
                scores.append(float(torch.diagonal(out["image_features"] @ out["text_features"].T)[0]))
        return scores

    # values k/255, so the PIL path (uint8) and ours see exactly the same pixels
    images = torch.randint(0, 256, (n, 3, 224, 224), generator=torch.Generator().manual_seed(0)) / 255.0
    pil = reward_zoo.to_pil(images)
    prompt = "a photo of a cat"
    package_score(pil[:1], prompt)  # warm-up
    start = time.perf_counter()
    package_scores = package_score(pil, prompt)
    package_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = reward_zoo.get("hpsv2", model_name=architecture, checkpoint=str(checkpoint))
    load_seconds = time.perf_counter() - start
    result = measure(ours, images, [prompt] * n, batch_size=n)
    ours_scores = ours(images, [prompt] * n).scores
    checkpoint.unlink()
    return {
        "architecture": f"open_clip {architecture}, random weights (HPS v2.1 is ViT-H-14)",
        "checkpoint_gb": round(sum(p.numel() for p in model.state_dict().values()) * 4 / 1e9, 2),
        "package_procedure": "replayed (the hpsv2 1.2.0 wheel lacks bpe_simple_vocab_16e6.txt.gz and fails to import)",
        "images_per_call": n,
        "package_images_per_s": round(n / package_seconds, 2),
        "reward_zoo_images_per_s": result["images_per_s"],
        "reward_zoo_one_time_load_s": round(load_seconds, 3),
        "speedup": round(result["images_per_s"] / (n / package_seconds), 2),
        "max_abs_score_difference": float(np.abs(np.asarray(package_scores, dtype=np.float32) - ours_scores.numpy()).max()),
    }


def imagereward_real_architecture(root: Path) -> dict:
    """ImageReward at its real size (ViT-L/16 + 12-layer BERT with cross-attention), random weights."""
    from transformers import BertTokenizer

    tokenizer_dir = root / "bert"
    tokenizer_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *("##" + c for c in string.ascii_lowercase)]
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tokenizer_dir / "vocab.txt")).save_pretrained(tokenizer_dir)
    med_config = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12,
        "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 1024, "add_cross_attention": True,
    }  # BLIP's med_config.json values
    (root / "med_config.json").write_text(json.dumps(med_config))
    from ImageReward.ImageReward import ImageReward

    from reward_zoo.imagereward import _local_bert_tokenizer

    with _local_bert_tokenizer(str(tokenizer_dir)):
        model = ImageReward(med_config=str(root / "med_config.json"))
    torch.save(model.state_dict(), root / "ImageReward.pt")
    del model
    start = time.perf_counter()
    scorer = reward_zoo.get("imagereward", checkpoint=str(root / "ImageReward.pt"),
                            med_config=str(root / "med_config.json"), tokenizer=str(tokenizer_dir))
    load_seconds = time.perf_counter() - start
    images = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    result = measure(scorer, images, ["a red circle on a table"] * 4, batch_size=2)
    return {**result, "load_seconds": round(load_seconds, 2)}


def clip_real_architecture(root: Path, n: int = 4) -> dict:
    """clipscore and aesthetic on open_clip ViT-L-14 (their real architecture), random weights."""
    import open_clip
    from safetensors.torch import save_file

    from reward_zoo.clip_models import AestheticHead

    checkpoint = root / "vit_l14.safetensors"
    save_file(open_clip.create_model("ViT-L-14", pretrained=None).state_dict(), checkpoint)
    torch.save(AestheticHead(768).state_dict(), root / "head_768.pth")
    images = torch.rand(n, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle on a table"] * n
    results = {}
    for name, extra in (("clipscore", {}), ("aesthetic", {"head": str(root / "head_768.pth")})):
        start = time.perf_counter()
        scorer = reward_zoo.get(name, model_name="ViT-L-14", checkpoint=str(checkpoint), **extra)
        load_seconds = time.perf_counter() - start
        results[f"{name} (ViT-L-14, random weights)"] = {**measure(scorer, images, prompts, n), "load_seconds": round(load_seconds, 2)}
        del scorer
    checkpoint.unlink()
    return results


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    results = {}
    from mogen.toyworld import sample_batch

    words, word_prompts = word_images(32)
    results["ocr/tesseract"] = measure(reward_zoo.get("ocr", backend="tesseract"), words, word_prompts, 16)
    results["ocr/tesseract num_workers=2"] = measure(reward_zoo.get("ocr", backend="tesseract", num_workers=2), words, word_prompts, 16)
    results["ocr/easyocr"] = measure(reward_zoo.get("ocr", backend="easyocr"), words[:16], word_prompts[:16], 8)
    toy_prompts, toy_images = sample_batch(64, 0)
    results["toy_verifier (32x32)"] = measure(reward_zoo.get("toy_verifier"), toy_images, toy_prompts, 64)
    big_prompts, big_images = sample_batch(64, 1, size=256)
    for name in ("compressibility", "incompressibility", "vivid"):
        results[f"{name} (256x256)"] = measure(reward_zoo.get(name), big_images, big_prompts, 64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = tiny_open_clip(root)
        for name in ("clipscore", "hpsv2"):
            results[f"{name} (tiny random config)"] = measure(reward_zoo.get(name, **tiny), big_images, big_prompts, 64)
        results["aesthetic (tiny random config)"] = measure(
            reward_zoo.get("aesthetic", head=str(root / "head.pth"), **tiny), big_images, big_prompts, 64)
        results["pickscore (tiny random config)"] = measure(
            reward_zoo.get("pickscore", **tiny_pickscore(root)), big_images, big_prompts, 64)
        results["hpsv2: package vs reward_zoo"] = hpsv2_package_vs_ours(root)
        results["imagereward (real architecture, random weights)"] = imagereward_real_architecture(root)
        if "--full" in sys.argv:  # real CLIP sizes: several GB of random checkpoints, a few minutes
            results.update(clip_real_architecture(root))
            results["hpsv2 ViT-H-14: package vs reward_zoo"] = hpsv2_package_vs_ours(root, "ViT-H-14", n=4)
    report = {
        "machine": {
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "images/s on CPU with one thread; random weights where no real weights exist here; "
        "the machine is shared, so treat numbers as rough (see load_average_at_end).",
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
