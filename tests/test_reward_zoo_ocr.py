"""The OCR reward with real engines (Debian tesseract, easyocr with offline weights) on rendered text,
and the toy-world verifier reward on rendered toy scenes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import reward_zoo
from reward_zoo import MissingWeightsError
from reward_zoo.ocr import edit_distance, extract_target, ocr_accuracy

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def render(text: str, size: tuple[int, int], font_size: int, background=(255, 220, 0)) -> torch.Tensor:
    """Black DejaVu Sans Bold text centred on a coloured background, as a (3,H,W) float tensor in [0,1]."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - right + left) / 2 - left, (size[1] - bottom + top) / 2 - top), text, font=font, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(scope="module")
def word_images() -> torch.Tensor:
    return torch.stack([
        render("HELLO", (192, 64), 36),
        render("OPEN 24", (192, 64), 34),
        render("mogen", (192, 64), 30),
    ])


def test_extract_target_rule():
    assert extract_target('a sign that says "HELLO"') == "HELLO"
    assert extract_target("a neon sign reading “Cafe 24” at night") == "Cafe 24"
    assert extract_target("a door with the word 'OPEN' painted on it") == "OPEN"
    assert extract_target("the letter K on a yellow background") == "K"
    assert extract_target("the number 42 in red") == "42"
    assert extract_target("a dog's toy") is None  # an apostrophe is not a quote
    assert extract_target("two red circles") is None


def test_ocr_accuracy_is_one_minus_normalized_edit_distance_clipped():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert ocr_accuracy("HELLO", "hello") == 1.0  # case-insensitive by default
    assert ocr_accuracy("HELLO", "hello", case_sensitive=True) == 0.0
    assert ocr_accuracy("HELL0", "HELLO") == pytest.approx(0.8)
    assert ocr_accuracy("OPEN\n24", "OPEN 24") == 1.0  # whitespace is ignored on both sides
    assert ocr_accuracy("a much longer reading", "abc") == 0.0  # clipped at 0


@pytest.mark.parametrize("backend", ["tesseract", "easyocr"])
def test_ocr_reads_rendered_words_and_penalizes_wrong_targets(backend, word_images):
    scorer = reward_zoo.get("ocr", backend=backend)
    right = scorer(word_images, ['a sign that says "HELLO"', "a shop sign 'OPEN 24'", 'the word "mogen"'])
    assert (right.scores >= 0.9).all(), right.texts
    wrong = scorer(word_images, ['a sign that says "WORLD"', 'a sign that says "CLOSED"', 'the word "python"'])
    assert (wrong.scores <= 0.4).all(), wrong.texts
    assert right.texts["target"] == ["HELLO", "OPEN 24", "mogen"]


def test_ocr_upscales_small_images_and_reads_single_letters():
    letters = torch.stack([render(ch, (32, 32), 22) for ch in "KRX"])
    scorer = reward_zoo.get("ocr", backend="tesseract")
    result = scorer(letters, [f"the letter {ch} on a yellow background" for ch in "KRX"])
    assert (result.scores >= 0.9).all(), result.texts
    assert (scorer(letters, ["the letter Q on a yellow background"] * 3).scores == 0).all()


def test_ocr_metadata_target_and_missing_target(word_images):
    scorer = reward_zoo.get("ocr", backend="tesseract")
    result = scorer(word_images[:2], ["a greeting", "a sign"], metadata=[{"text": "HELLO"}, {}])
    assert result.scores[0] >= 0.9
    assert result.failed.tolist() == [False, True] and "no target text" in result.errors[1]


def test_ocr_missing_easyocr_weights_are_named(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"reward 'ocr': easyocr weights \['craft_mlt_25k.pth', 'english_g2.pth'\]"):
        reward_zoo.get("ocr", backend="easyocr", easyocr_model_dir=str(tmp_path))


# --- toy world verifier -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_batch():
    from mogen.toyworld import sample_batch

    return sample_batch(8, 0, tasks=("count", "position", "text"))


def test_toy_verifier_scores_ground_truth_high_and_matches_verify(toy_batch):
    from mogen.toyworld.verify import verify

    prompts, images = toy_batch
    table = verify(images, prompts)
    overall = reward_zoo.get("toy_verifier")(images, prompts)
    torch.testing.assert_close(overall.scores, table["overall"])
    assert overall.scores.mean() >= 0.9
    for attribute in ("count", "position", "text"):
        result = reward_zoo.get("toy_verifier", attribute=attribute, not_applicable=-1.0)(images, prompts)
        applicable = ~torch.isnan(table[attribute])
        torch.testing.assert_close(result.scores[applicable], table[attribute][applicable])
        assert (result.scores[~applicable] == -1.0).all() and not result.failed.any()
        torch.testing.assert_close(result.details["applicable"], applicable.float())


def test_toy_verifier_penalizes_mismatched_prompts(toy_batch):
    prompts, images = toy_batch
    scorer = reward_zoo.get("toy_verifier", attribute="all_correct")
    assert scorer(images, prompts[1:] + prompts[:1]).scores.mean() < scorer(images, prompts).scores.mean() - 0.4


def test_toy_verifier_fails_only_the_sample_with_an_unparseable_prompt(toy_batch):
    prompts, images = toy_batch
    bad = ["a purple elephant"] + prompts[1:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = reward_zoo.get("toy_verifier")(images[:4], bad)
    assert result.failed.tolist() == [True, False, False, False]
    assert "cannot parse" in result.errors[0]
    with pytest.raises(reward_zoo.ScorerConfigError, match="attribute must be one of"):
        reward_zoo.get("toy_verifier", attribute="size")
