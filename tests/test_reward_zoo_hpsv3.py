"""HPSv3 from a tiny random-weight Qwen2-VL and reward head, saved in the release's checkpoint layout and loaded
back through the arguments users pass (a checkpoint file + a base model directory, or both from the hub cache).

The reference below follows the release's own procedure (MizzenAI/HPSv3, hpsv3/inference.py and
hpsv3/model/qwen2vl_trainer.py) on the in-memory model: qwen-vl-utils-style PIL resize, the processor with
right padding, the image features scattered into the embeddings, the decoder run without position ids (as
transformers 4.45 ran it), the head on every token and the one `<|Reward|>` row picked, mu = output 0.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_reward_zoo_models import _fake_hub_cache, hub_cache  # noqa: F401 - hub_cache is a fixture

import reward_zoo
from reward_zoo import MissingWeightsError, ScorerConfigError
from reward_zoo.hpsv3 import INSTRUCTION, REWARD_SUFFIX, REWARD_TOKEN, HPSv3Head

PROMPTS = ["a red circle", "two blue squares on a white table", "a cat", "the letter K"]
PIXELS = 256 * 28 * 28  # the release's


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 40, 48, generator=torch.Generator().manual_seed(seed))


def _release_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 4.52 names -> the names HPSv3.safetensors has (transformers 4.45: visual.*, model.*)."""
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("model.visual."):
            key = key.removeprefix("model.")
        elif key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        renamed[key] = tensor.contiguous()
    return renamed


@pytest.fixture(scope="module")
def tiny_hpsv3(tmp_path_factory):
    """A tiny Qwen2-VL base directory (config + processor) and an HPSv3 checkpoint built the way the release was."""
    from openai_vlm_server import build_tiny_vlm
    from safetensors.torch import save_file
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    root = tmp_path_factory.mktemp("hpsv3")
    base = build_tiny_vlm(root / "base")
    processor = AutoProcessor.from_pretrained(base, use_fast=False)
    processor.image_processor = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)  # Qwen2-VL-7B-Instruct's
    processor.save_pretrained(base)

    # The release: the base model, <|Reward|> added to the tokenizer, embeddings resized to it, an MLP head.
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    processor.tokenizer.padding_side = "right"
    model = Qwen2VLForConditionalGeneration.from_pretrained(base).eval()
    model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    torch.manual_seed(1)
    head = HPSv3Head(model.config.text_config.hidden_size).eval()
    for layer in head:  # unit-gain layers, and a large output gain: the random model's reward-token states
        if isinstance(layer, torch.nn.Linear):  # differ little between samples (2k shared instruction tokens)
            torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    head[5].weight.data *= 100
    state = _release_keys(model.state_dict()) | {f"rm_head.{k}": v for k, v in head.state_dict().items()}
    save_file(state, root / "HPSv3.safetensors")
    return {"root": root, "base": base, "model": model, "head": head, "processor": processor,
            "checkpoint": root / "HPSv3.safetensors", "state": state}


def _reference_scores(tiny, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    model, processor = tiny["model"], tiny["processor"]
    pil = []
    for image in images:
        array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        height, width = smart_resize(array.shape[0], array.shape[1], 28, min_pixels=PIXELS, max_pixels=PIXELS)
        pil.append(Image.fromarray(array).resize((width, height), Image.BICUBIC))
    messages = [[{"role": "user", "content": [
        {"type": "image", "image": image, "min_pixels": PIXELS, "max_pixels": PIXELS},
        {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX},
    ]}] for image, prompt in zip(pil, prompts)]
    batch = processor(text=processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                      images=pil, padding=True, return_tensors="pt")
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        image_embeds = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        embeds[ids == model.config.image_token_id] = image_embeds
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
        logits = tiny["head"](hidden.float())
    reward_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    assert (ids == reward_id).sum(1).eq(1).all()
    return logits[ids == reward_id][:, 0]


def _load(tiny, **kwargs):
    kwargs = {"checkpoint": str(tiny["checkpoint"]), "base": str(tiny["base"]), "torch_dtype": "float32"} | kwargs
    return reward_zoo.get("hpsv3", **kwargs)


def test_hpsv3_scores_equal_the_in_memory_release_model(tiny_hpsv3):
    scorer = _load(tiny_hpsv3)
    assert scorer.higher_is_better and scorer.dtype == torch.float32
    images = _images()
    result = scorer(images, PROMPTS)
    assert result.scores.dtype == torch.float32 and not result.failed.any()
    reference = _reference_scores(tiny_hpsv3, images, PROMPTS)
    torch.testing.assert_close(result.scores, reference, rtol=1e-5, atol=1e-5)
    assert reference.std() > 0.1  # the samples' scores differ far beyond the tolerance: the check is not vacuous
    assert (result.details["sigma"] > 0).all()  # exp of the head's second output (the log-std)
    torch.testing.assert_close(scorer(images, PROMPTS).scores, result.scores, rtol=0, atol=0)  # deterministic
    one_by_one = torch.cat([scorer(images[i : i + 1], PROMPTS[i : i + 1]).scores for i in range(len(images))])
    torch.testing.assert_close(one_by_one, result.scores, rtol=1e-5, atol=1e-5)  # padding does not leak
    swapped = scorer(images, PROMPTS[1:] + PROMPTS[:1]).scores  # each image with another image's prompt
    assert ((swapped - result.scores).abs() > 1e-2).all()


def test_hpsv3_loads_the_transformers_4_52_layout_and_torch_state_dicts(tiny_hpsv3, tmp_path):
    modern = {k: v for k, v in tiny_hpsv3["model"].state_dict().items()}
    modern |= {f"rm_head.{k}": v for k, v in tiny_hpsv3["head"].state_dict().items()}
    torch.save({"model": modern}, tmp_path / "final_model.pth")  # what the release's training script writes
    images = _images(2, seed=3)
    torch.testing.assert_close(
        _load(tiny_hpsv3, checkpoint=str(tmp_path / "final_model.pth"))(images, PROMPTS[:2]).scores,
        _load(tiny_hpsv3)(images, PROMPTS[:2]).scores, rtol=0, atol=0,
    )


def test_hpsv3_bf16_backbone_keeps_a_float32_head_and_score(tiny_hpsv3, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.to(torch.bfloat16) if not k.startswith("rm_head.") else v for k, v in tiny_hpsv3["state"].items()}
    save_file(state, tmp_path / "HPSv3.safetensors")  # as released: bf16 model, float32 head
    scorer = _load(tiny_hpsv3, checkpoint=str(tmp_path / "HPSv3.safetensors"), torch_dtype="bfloat16")
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in scorer.head.parameters())
    images = _images()
    scores = scorer(images, PROMPTS).scores
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, _reference_scores(tiny_hpsv3, images, PROMPTS), rtol=0.05, atol=0.05)
    scorer.to(dtype=torch.float32)  # the Scorer.to contract: the backbone follows, the head stays float32
    assert next(scorer.model.parameters()).dtype == torch.float32 and scorer.head[0].weight.dtype == torch.float32


def test_hpsv3_prompt_holding_the_reward_token_reads_the_template_one(tiny_hpsv3):
    scorer = _load(tiny_hpsv3)
    images = _images(1)
    result = scorer(images, [f"a cat {REWARD_TOKEN}"])
    assert not result.failed.any() and torch.isfinite(result.scores).all()


def test_hpsv3_missing_weights_name_the_scorer_path_and_fix(tiny_hpsv3, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        _load(tiny_hpsv3, checkpoint=str(tmp_path / "HPSv3.safetensors"))
    message = str(info.value)
    assert "'hpsv3'" in message and str(tmp_path / "HPSv3.safetensors") in message
    assert "huggingface-cli download MizzenAI/HPSv3 HPSv3.safetensors" in message
    with pytest.raises(MissingWeightsError, match=r"'hpsv3'.*Qwen2-VL-7B-Instruct config.*nowhere"):
        _load(tiny_hpsv3, base=str(tmp_path / "nowhere"))


def test_hpsv3_wrong_checkpoint_is_one_clear_error(tiny_hpsv3, tmp_path):
    from safetensors.torch import save_file

    no_head = {k: v for k, v in tiny_hpsv3["state"].items() if not k.startswith("rm_head.")}
    save_file(no_head, tmp_path / "qwen.safetensors")
    with pytest.raises(ScorerConfigError, match=r"reward .hpsv3.: cannot load .*qwen.safetensors.*no rm_head"):
        _load(tiny_hpsv3, checkpoint=str(tmp_path / "qwen.safetensors"))
    truncated = {k: v for k, v in tiny_hpsv3["state"].items() if "layers.1." not in k}
    save_file(truncated, tmp_path / "truncated.safetensors")
    with pytest.raises(ScorerConfigError, match=r"reward .hpsv3.: cannot load .*truncated.safetensors.*Missing key") as info:
        _load(tiny_hpsv3, checkpoint=str(tmp_path / "truncated.safetensors"))
    assert "\n" not in str(info.value)


def test_hpsv3_default_weights_resolve_from_the_local_hub_cache(tiny_hpsv3, hub_cache):  # noqa: F811
    assert not reward_zoo.available()["hpsv3"].weights_present
    with pytest.raises(MissingWeightsError, match=r"hf://MizzenAI/HPSv3/HPSv3.safetensors"):
        reward_zoo.get("hpsv3")
    _fake_hub_cache(hub_cache, "MizzenAI/HPSv3", {"HPSv3.safetensors": tiny_hpsv3["checkpoint"]})
    base_files = {p.name: p for p in tiny_hpsv3["base"].iterdir() if not p.name.endswith(".safetensors")}
    _fake_hub_cache(hub_cache, "Qwen/Qwen2-VL-7B-Instruct", base_files)  # config and processor only, no weights
    info = reward_zoo.available()["hpsv3"]
    assert info.weights_present and info.arguments["pixels"] == PIXELS
    images = _images(2)
    torch.testing.assert_close(reward_zoo.get("hpsv3", torch_dtype="float32")(images, PROMPTS[:2]).scores,
                               _reference_scores(tiny_hpsv3, images, PROMPTS[:2]), rtol=1e-5, atol=1e-5)


def test_hpsv3_instruction_is_the_release_text_byte_for_byte():
    """The checkpoint only scores correctly with the exact training text; sha256 of INSTRUCTION +
    prompt_with_special_token in hpsv3/dataset/data_collator_qwen.py of the hpsv3 1.0.0 sdist (PyPI)."""
    import hashlib

    text = INSTRUCTION + REWARD_SUFFIX
    assert hashlib.sha256(text.encode()).hexdigest() == "f6ee57479d4e9eee76b49c00dc962e1e696a5a2b3cc32cebd9b1fa76fe27502c"
    assert INSTRUCTION.count("{text_prompt}") == 1 and REWARD_SUFFIX.count(REWARD_TOKEN) == 1
