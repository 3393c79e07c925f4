"""Model-backed scorers, each built from a tiny random-weight config, saved to disk and loaded back through
the same arguments users pass (local files, hf:// specs and hub ids resolved from a local hub cache)."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import reward_zoo
from reward_zoo import MissingWeightsError, ScorerConfigError

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red circle", "two blue squares", "a cat", "the letter K"]


def _images(n: int = 4, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _fake_hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, snapshot / name) if source.is_file() else shutil.copytree(source, snapshot / name)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def _assert_scorer_contract(scorer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Shape (B,), float32, finite, deterministic, and scoring a batch equals scoring its halves."""
    whole = scorer(images, prompts)
    assert whole.scores.shape == (len(images),) and whole.scores.dtype == torch.float32
    assert not whole.failed.any() and torch.isfinite(whole.scores).all()
    torch.testing.assert_close(scorer(images, prompts).scores, whole.scores, rtol=0, atol=0)
    half = len(images) // 2
    halves = torch.cat([scorer(images[:half], prompts[:half]).scores, scorer(images[half:], prompts[half:]).scores])
    torch.testing.assert_close(halves, whole.scores, rtol=1e-5, atol=1e-5)
    return whole.scores


# --- open_clip: clipscore, hpsv2, aesthetic ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    from reward_zoo.clip_models import AestheticHead

    root = tmp_path_factory.mktemp("open_clip")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None).eval()
    from safetensors.torch import save_file

    save_file(model.state_dict(), root / "clip.safetensors")
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, root / "hps.pt")  # HPS checkpoints look like this
    head = AestheticHead(32)
    for layer in head.layers:
        if isinstance(layer, torch.nn.Linear):  # unit-gain init so the random head's output varies visibly
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    torch.save(head.state_dict(), root / "head.pth")
    return {"config": str(config), "model": model, "head": head.eval(), "root": root}


def _reference_features(model, images, prompts):
    import open_clip

    from reward_zoo.clip_models import clip_pixels

    cfg = open_clip.get_model_preprocess_cfg(model)
    pixels = clip_pixels(images, cfg["size"][0], cfg["mean"], cfg["std"], torch.float32)
    tokens = open_clip.get_tokenizer("tiny-clip")(prompts)
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(tokens), dim=-1)


def test_clipscore_loads_the_saved_weights_and_scores_cosine(tiny_open_clip):
    scorer = reward_zoo.get(
        "clipscore", model_name=tiny_open_clip["config"], checkpoint=str(tiny_open_clip["root"] / "clip.safetensors")
    )
    images = _images()
    scores = _assert_scorer_contract(scorer, images, PROMPTS)
    image_features, text_features = _reference_features(tiny_open_clip["model"], images, PROMPTS)
    torch.testing.assert_close(scores, (image_features * text_features).sum(-1), rtol=1e-5, atol=1e-6)
    assert not torch.equal(scores, scorer(images, PROMPTS[::-1]).scores)  # the prompt matters
    scaled = reward_zoo.get("clipscore", model_name=tiny_open_clip["config"],
                            checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"), scale=100.0)
    torch.testing.assert_close(scaled(images, PROMPTS).scores, 100 * scores)


def test_hpsv2_default_checkpoint_resolves_from_the_local_hub_cache(tiny_open_clip, hub_cache):
    assert not reward_zoo.available()["hpsv2"].weights_present
    with pytest.raises(MissingWeightsError) as info:
        reward_zoo.get("hpsv2", model_name=tiny_open_clip["config"])
    message = str(info.value)
    assert "'hpsv2'" in message and "hf://xswu/HPSv2/HPS_v2.1_compressed.pt" in message and "huggingface-cli download" in message

    _fake_hub_cache(hub_cache, "xswu/HPSv2", {"HPS_v2.1_compressed.pt": tiny_open_clip["root"] / "hps.pt"})
    assert reward_zoo.available()["hpsv2"].weights_present
    scorer = reward_zoo.get("hpsv2", model_name=tiny_open_clip["config"])  # default checkpoint, from the cache
    images = _images()
    scores = _assert_scorer_contract(scorer, images, PROMPTS)
    image_features, text_features = _reference_features(tiny_open_clip["model"], images, PROMPTS)
    torch.testing.assert_close(scores, (image_features * text_features).sum(-1), rtol=1e-5, atol=1e-6)


def test_aesthetic_is_the_head_on_normalized_image_embeddings(tiny_open_clip):
    scorer = reward_zoo.get(
        "aesthetic",
        model_name=tiny_open_clip["config"],
        checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"),
        head=str(tiny_open_clip["root"] / "head.pth"),
    )
    images = _images()
    scores = _assert_scorer_contract(scorer, images, PROMPTS)
    image_features, _ = _reference_features(tiny_open_clip["model"], images, PROMPTS)
    with torch.no_grad():
        expected = tiny_open_clip["head"](image_features).squeeze(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scorer(images, [""] * 4).scores, scores)  # the prompt is not used
    assert scores.std() > 0


def test_open_clip_errors_name_the_scorer_and_the_fix(tiny_open_clip, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"reward 'aesthetic': the aesthetic MLP head not found at .*linearMSE.pth"):
        reward_zoo.get("aesthetic", model_name=tiny_open_clip["config"],
                       checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"), head=str(tmp_path / "linearMSE.pth"))
    with pytest.raises(MissingWeightsError, match=r"reward 'clipscore': ViT-L-14 checkpoint not found at hf://timm/"):
        reward_zoo.get("clipscore")  # the 'openai' tag, looked up in the (empty) local cache only
    with pytest.raises(ScorerConfigError, match=r"reward 'clipscore': checkpoint 'opnai' is not .* tags: \['openai'"):
        reward_zoo.get("clipscore", checkpoint="opnai")
    with pytest.raises(ScorerConfigError, match=r"unknown open_clip model_name 'ViT-Q-99'"):
        reward_zoo.get("clipscore", model_name="ViT-Q-99", checkpoint="x.pt")
    with pytest.raises(ScorerConfigError, match=r"does not fit open_clip ViT-B-32"):
        reward_zoo.get("clipscore", model_name="ViT-B-32", checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"))


# --- pickscore (transformers) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    root = tmp_path_factory.mktemp("pickscore")
    processor_dir, model_dir = root / "processor", root / "model"
    processor_dir.mkdir()
    # A character-level CLIP BPE vocabulary (no merges): every byte, with and without the word-end mark.
    # The text tower pools at the first eos_token_id, so the config must name this vocabulary's ids.
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (processor_dir / "vocab.json").write_text(json.dumps(vocab))
    (processor_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(processor_dir / "vocab.json"), str(processor_dir / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(processor_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(processor_dir)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(model_dir)
    return {"model": model, "tokenizer": tokenizer, "model_dir": model_dir, "processor_dir": processor_dir}


def test_pickscore_from_local_dirs_matches_the_in_memory_model(tiny_pickscore):
    from reward_zoo.clip_models import clip_pixels

    scorer = reward_zoo.get("pickscore", model=str(tiny_pickscore["model_dir"]), processor=str(tiny_pickscore["processor_dir"]))
    images = _images()
    scores = _assert_scorer_contract(scorer, images, PROMPTS)
    model = tiny_pickscore["model"]
    pixels = clip_pixels(images, 32, scorer.mean, scorer.std, torch.float32)
    tokens = tiny_pickscore["tokenizer"](PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_features = F.normalize(model.get_image_features(pixel_values=pixels), dim=-1)
        text_features = F.normalize(model.get_text_features(**tokens), dim=-1)
    expected = model.logit_scale.exp() * (image_features * text_features).sum(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(scores, scorer(images, PROMPTS[::-1]).scores)


def test_pickscore_default_hub_id_resolves_from_the_local_cache(tiny_pickscore, hub_cache):
    with pytest.raises(MissingWeightsError, match=r"reward 'pickscore': the PickScore CLIPModel not found at yuvalkirstain/PickScore_v1"):
        reward_zoo.get("pickscore", processor=str(tiny_pickscore["processor_dir"]))
    _fake_hub_cache(hub_cache, "yuvalkirstain/PickScore_v1", {
        name: tiny_pickscore["model_dir"] / name for name in ("config.json", "model.safetensors")})
    scorer = reward_zoo.get("pickscore", processor=str(tiny_pickscore["processor_dir"]))
    assert scorer(_images(2), PROMPTS[:2]).scores.shape == (2,)


# --- imagereward (image-reward package) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_imagereward(tmp_path_factory):
    """The package's ImageReward module (BLIP ViT-L is fixed by the package) with a 1-layer BERT and a
    character-level BERT vocabulary, random weights, saved as a state dict like ImageReward.pt."""
    from transformers import BertTokenizer

    from reward_zoo.imagereward import _local_bert_tokenizer

    root = tmp_path_factory.mktemp("imagereward")
    tokenizer_dir = root / "bert"
    tokenizer_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits]
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tokenizer_dir / "vocab.txt")).save_pretrained(tokenizer_dir)
    med_config = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 64,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
        "encoder_width": 1024, "add_cross_attention": True,
    }  # hidden_size 768 is fixed by the package's MLP(768); +2 tokens: BLIP adds [DEC] and [ENC]
    (root / "med_config.json").write_text(json.dumps(med_config))
    from ImageReward.ImageReward import ImageReward

    torch.manual_seed(0)
    with _local_bert_tokenizer(str(tokenizer_dir)):
        model = ImageReward(med_config=str(root / "med_config.json"), device="cpu").eval()
    for layer in model.mlp.layers:
        if isinstance(layer, torch.nn.Linear):  # the package's init makes the MLP output ~0 for every input
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    torch.save(model.state_dict(), root / "ImageReward.pt")
    return {"model": model, "root": root, "tokenizer_dir": tokenizer_dir}


@pytest.mark.slow
def test_imagereward_batched_path_matches_the_package_score(tiny_imagereward):
    root = tiny_imagereward["root"]
    init_functions = (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_)
    scorer = reward_zoo.get(
        "imagereward", checkpoint=str(root / "ImageReward.pt"), med_config=str(root / "med_config.json"),
        tokenizer=str(tiny_imagereward["tokenizer_dir"]),
    )
    assert (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_) == init_functions  # init skipping was undone
    # 224x224 images with values k/255, so the package's PIL path sees exactly the same pixels.
    images = (torch.randint(0, 256, (2, 3, 224, 224), generator=torch.Generator().manual_seed(0)) / 255.0)
    prompts = ["a red circle", "two blue squares"]
    whole = scorer(images, prompts)
    assert whole.scores.shape == (2,) and whole.scores.dtype == torch.float32 and not whole.failed.any()
    assert whole.scores[0] != whole.scores[1]
    # The batched tensor path equals the package's own single-image PIL path (which also shows batch invariance).
    pil = Image.fromarray((images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    with torch.no_grad():
        reference = tiny_imagereward["model"].score(prompts[0], pil)
    assert whole.scores[0].item() == pytest.approx(reference, abs=1e-4)


def test_imagereward_missing_files_are_named(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"reward 'imagereward': the ImageReward checkpoint not found at hf://THUDM/ImageReward/ImageReward.pt"):
        reward_zoo.get("imagereward")
    (tmp_path / "ImageReward.pt").write_bytes(b"")
    (tmp_path / "med_config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"the BERT tokenizer not found at .*nowhere"):
        reward_zoo.get("imagereward", checkpoint=str(tmp_path / "ImageReward.pt"),
                       med_config=str(tmp_path / "med_config.json"), tokenizer=str(tmp_path / "nowhere"))


def test_model_scorer_to_moves_modules_and_dtype(tiny_open_clip):
    scorer = reward_zoo.get("clipscore", model_name=tiny_open_clip["config"],
                            checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"), dtype=torch.bfloat16)
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    result = scorer(_images(2), PROMPTS[:2])
    assert result.scores.dtype == torch.float32  # scores stay float32 whatever the model's dtype
    full = reward_zoo.get("clipscore", model_name=tiny_open_clip["config"],
                          checkpoint=str(tiny_open_clip["root"] / "clip.safetensors"))(_images(2), PROMPTS[:2])
    torch.testing.assert_close(result.scores, full.scores, rtol=0, atol=0.05)
