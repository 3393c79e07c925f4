"""The built-in tiny model: offline tokenizer, save/load round trip, shipped weights, LoRA, `mogen sample`."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from peft import LoraConfig
from PIL import Image
from typer.testing import CliRunner

from mogen.cli import app
from mogen.models import BUILTIN_TINY, LORA_TARGET_MODULES, TinyConfig, TinyT2I, build_clip_tokenizer, builtin_tiny_path
from mogen.models.tokenizer import CLIP_NUM_MERGES

PROMPTS = ["two red circles", "a blue square left of a green triangle", "the letter K on a yellow background"]
SMALL = TinyConfig(num_layers=2, num_heads=2, head_dim=16, text_hidden=32, text_layers=1, num_merges=512, vae_channels=(8, 8, 16))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> TinyT2I:
    torch.manual_seed(0)
    return TinyT2I.from_config(SMALL, tmp_path_factory.mktemp("tok")).eval()


def test_full_tokenizer_matches_open_clip(tmp_path):
    """With all merges, the offline-built CLIPTokenizer gives OpenAI CLIP's ids (open_clip's own tokenizer)."""
    tokenizer = build_clip_tokenizer(tmp_path, num_merges=CLIP_NUM_MERGES, model_max_length=77)
    assert len(tokenizer) == 49408
    reference = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    for prompt, ref in zip(PROMPTS, reference):
        ids = tokenizer(prompt).input_ids
        assert ids == ref[: len(ids)].tolist()
        assert ref[len(ids)] == 0  # open_clip pads with 0 right after the end token


def test_truncated_tokenizer_round_trips_and_covers_any_text(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path, num_merges=300, model_max_length=16)
    assert len(tokenizer) == 256 + 256 + 300 + 2
    loaded = type(tokenizer).from_pretrained(tmp_path)
    assert loaded.model_max_length == 16
    batch = loaded(["zebra quokka xylophone 42"], padding="max_length", truncation=True, max_length=16).input_ids[0]
    assert len(batch) == 16 and batch[0] == loaded.bos_token_id
    assert loaded.unk_token_id not in batch[1 : batch.index(loaded.eos_token_id)]  # bytes cover every character
    with pytest.raises(ValueError, match="num_merges"):
        build_clip_tokenizer(tmp_path, num_merges=-1)


def test_save_load_round_trip_gives_equal_outputs(random_model, tmp_path):
    folder = random_model.save_pretrained(tmp_path / "tiny")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "TinyT2I"
    loaded = TinyT2I.from_pretrained(folder)
    cond_a, cond_b = random_model.encode_prompts(PROMPTS), loaded.encode_prompts(PROMPTS)
    torch.testing.assert_close(cond_a.prompt_embeds, cond_b.prompt_embeds, rtol=0, atol=0)
    x = torch.randn(3, *random_model.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        torch.testing.assert_close(random_model.velocity(x, t, cond_a), loaded.velocity(x, t, cond_b), rtol=0, atol=0)
    for sampler in ("ode", "sde"):
        a = random_model.sample(PROMPTS, num_steps=3, sampler=sampler, seed=5)
        b = loaded.sample(PROMPTS, num_steps=3, sampler=sampler, seed=5)
        assert a.shape == (3, 3, SMALL.image_size, SMALL.image_size) and 0 <= a.min() and a.max() <= 1
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_latent_round_trip_shapes(random_model):
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = random_model.encode_images(images)
        assert latents.shape == (2, *random_model.latent_shape) == (2, 4, 8, 8)
        assert random_model.decode(latents).shape == images.shape


def test_from_pretrained_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        TinyT2I.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "TinyT2I", "image_size": 32}))
    with pytest.raises(ValueError, match="missing subfolders"):
        TinyT2I.from_pretrained(tmp_path)


def test_shipped_weights_load_and_sampling_is_deterministic():
    model = TinyT2I.from_pretrained(BUILTIN_TINY)
    assert (builtin_tiny_path() / "model_index.json").is_file()
    assert not any(p.requires_grad for p in model.parameters())
    a = model.sample(PROMPTS, num_steps=4, seed=3)
    b = model.sample(PROMPTS, num_steps=4, seed=3)
    c = model.sample(PROMPTS, num_steps=4, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    d = model.sample(PROMPTS, num_steps=4, sampler="sde", eta=0.7, seed=3)
    assert not torch.allclose(a, d)  # SDE noise changes the result
    torch.testing.assert_close(d, model.sample(PROMPTS, num_steps=4, sampler="sde", eta=0.7, seed=3), rtol=0, atol=0)


def test_lora_attaches_to_attention_and_only_lora_gets_gradients(random_model, tmp_path):
    model = TinyT2I.from_pretrained(random_model.save_pretrained(tmp_path / "tiny"))
    x = torch.randn(2, *model.latent_shape)
    cond = model.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        base = model.velocity(x, 0.7, cond)
    model.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert trainable and all(".lora_" in n for n in trainable)
    assert wrapped == {"to_q", "to_k", "to_v", "0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, 0.7, cond), base)  # LoRA B starts at zero
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(trainable.values(), lr=1.0)
    for _ in range(2):  # first step moves B (A's gradient is zero while B is), second moves A too
        opt.zero_grad()
        model.velocity(x, 0.7, cond).pow(2).mean().backward()
        assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
        opt.step()
    # The last joint block is "context pre-only": its text-token outputs are discarded, so the LoRA on its
    # text-query projection (add_q_proj) has an exactly zero gradient; every other LoRA matrix learns.
    last = f"transformer_blocks.{SMALL.num_layers - 1}.attn.add_q_proj."
    dead = {n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0}
    assert dead == {n for n in trainable if last in n} and len(dead) == 2
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        assert not torch.allclose(model.velocity(x, 0.7, cond), base)
        model.transformer.disable_adapters()
        torch.testing.assert_close(model.velocity(x, 0.7, cond), base)  # the reference policy is the base model


def test_sample_command_writes_a_deterministic_grid(random_model, tmp_path):
    folder = random_model.save_pretrained(tmp_path / "tiny")
    runner = CliRunner()
    outs = []
    for name in ("a.png", "b.png"):
        args = ["sample", "--model", str(folder), "-p", "two red circles", "-p", "a blue square", "--num", "3",
                "--steps", "2", "--seed", "7", "--out", str(tmp_path / name)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs.append(np.asarray(Image.open(tmp_path / name)))
    assert outs[0].shape[0] > 2 * 128 and outs[0].shape[1] > 3 * 128  # 2 labelled rows of 3 upscaled images
    assert np.array_equal(outs[0], outs[1])
    bad = runner.invoke(app, ["sample", "--model", str(tmp_path / "missing"), "-p", "x", "--out", str(tmp_path / "c.png")])
    assert bad.exit_code != 0 and "model_index.json" in bad.output
