"""reward_zoo's contract, registry, entry points, model-free scorers, folder scoring and CLI."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import reward_zoo
from reward_zoo import ScoreResult, Scorer, ScorerConfigError, ScorerError
from reward_zoo.folder import read_folder

PLUGIN_DIR = Path(__file__).parent / "reward_plugin"


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class NaNOnOdd(Scorer):
    name, description = "nan_on_odd", "test: NaN / inf on odd samples"

    def score(self, images, prompts, metadata):
        scores = images.mean(dim=(1, 2, 3)).double()
        scores[1::2] = float("nan")
        scores[3::4] = float("inf")
        return scores


class RaisesOnPrompt(Scorer):
    name, description = "raises_on_bad", "test: raises on the prompt 'bad'"

    def score(self, images, prompts, metadata):
        if "bad" in prompts:
            raise RuntimeError("cannot score 'bad'")
        scores = torch.arange(len(prompts), dtype=torch.float32)
        return ScoreResult(scores, details={"twice": 2 * scores}, texts={"prompt": list(prompts)})


# --- contract -----------------------------------------------------------------------------------


def test_non_finite_scores_are_reported_as_failed_not_raised():
    result = NaNOnOdd()(_images(5), ["p"] * 5)
    assert result.scores.dtype == torch.float32 and result.scores.shape == (5,)
    assert result.failed.tolist() == [False, True, False, True, False]
    assert torch.isnan(result.scores[result.failed]).all()
    assert torch.isfinite(result.scores[~result.failed]).all()
    assert set(result.errors) == {1, 3} and "non-finite" in result.errors[1]


def test_exception_on_one_sample_fails_that_sample_only():
    with pytest.warns(UserWarning, match="sample by sample"):
        result = RaisesOnPrompt()(_images(3), ["ok", "bad", "ok"])
    assert result.failed.tolist() == [False, True, False]
    assert result.scores[0] == 0 and result.scores[2] == 0  # each retried alone: index 0 in its batch of 1
    assert "cannot score 'bad'" in result.errors[1]
    assert result.details["twice"][[0, 2]].tolist() == [0.0, 0.0] and result.details["twice"][1].isnan()
    assert result.texts["prompt"] == ["ok", "", "ok"]


def test_exception_on_every_sample_raises_with_the_scorer_name():
    with pytest.raises(ScorerError, match="raises_on_bad"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RaisesOnPrompt()(_images(2), ["bad", "bad"])


def test_batch_size_chunks_and_keeps_error_indices_global():
    scorer = NaNOnOdd(batch_size=2)
    result = scorer(_images(5), None)
    assert result.failed.tolist() == [False, True, False, True, False]
    assert set(result.errors) == {1, 3}


def test_input_validation_names_the_problem():
    scorer = reward_zoo.get("vivid")
    with pytest.raises(ScorerConfigError, match=r"\(B,3,H,W\)"):
        scorer(torch.rand(3, 32, 32))
    with pytest.raises(ScorerConfigError, match="uint8"):
        scorer((torch.rand(2, 3, 8, 8) * 255).to(torch.uint8))
    with pytest.raises(ScorerConfigError, match="2 images, 3 prompts"):
        scorer(torch.rand(2, 3, 8, 8), ["a", "b", "c"])


# --- registry -----------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ScorerConfigError) as info:
        reward_zoo.get("pikscore")
    message = str(info.value)
    assert "'pikscore'" in message
    for name in ("pickscore", "ocr", "compressibility", "toy_verifier", "hpsv2", "imagereward"):
        assert name in message


def test_bad_kwarg_names_scorer_and_argument():
    with pytest.raises(ScorerConfigError, match=r"reward 'compressibility' has no argument 'qualty'.*quality=95"):
        reward_zoo.get("compressibility", qualty=90)
    with pytest.raises(ScorerConfigError, match=r"reward 'compressibility'.*quality"):
        reward_zoo.get("compressibility", quality=500)
    with pytest.raises(ScorerConfigError, match=r"reward 'ocr'.*backend"):
        reward_zoo.get("ocr", backend="paddle")
    with pytest.raises(ScorerConfigError, match=r"reward 'vivid': argument 'contrast_weight' must be float, got 'high'"):
        reward_zoo.get("vivid", contrast_weight="high")
    with pytest.raises(ScorerConfigError, match=r"reward 'compressibility': argument 'quality' must be int, got 90.5"):
        reward_zoo.get("compressibility", quality=90.5)
    assert reward_zoo.get("vivid", contrast_weight="0.25").contrast_weight == 0.25  # YAML/CLI strings coerce


def test_available_reports_descriptions_and_weights():
    table = reward_zoo.available()
    assert {"ocr", "compressibility", "incompressibility", "vivid", "aesthetic", "clipscore", "pickscore",
            "hpsv2", "imagereward", "toy_verifier"} <= set(table)
    assert table["compressibility"].weights_present and table["compressibility"].source == "reward_zoo"
    assert table["toy_verifier"].source == "mogen"  # registered by mogen, not a reward_zoo built-in
    assert table["vivid"].arguments["contrast_weight"] == 0.5
    assert all(info.description and not info.description.startswith("(failed") for info in table.values())


@pytest.fixture
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    yield


def test_entry_point_scorer_is_registered_and_usable(plugin_on_path):
    assert "mean_brightness" in reward_zoo.names()
    scorer = reward_zoo.get("mean_brightness", gain=2.0)
    images = _images(3)
    torch.testing.assert_close(scorer(images).scores, 2.0 * images.mean(dim=(1, 2, 3)))
    info = reward_zoo.available()["mean_brightness"]
    assert info.source == "mogen-test-rewards" and info.weights_present


def test_entry_point_errors_are_clear(plugin_on_path):
    with pytest.raises(ScorerConfigError, match="not a reward_zoo.Scorer subclass"):
        reward_zoo.get("not_a_scorer")
    assert reward_zoo.available()["not_a_scorer"].description.startswith("(failed to load")
    with pytest.warns(UserWarning, match="reuses the built-in reward name 'ocr'"):
        names = reward_zoo.names()
    assert names.count("ocr") == 1  # the built-in wins
    with pytest.raises(ScorerConfigError, match="has no argument 'offset'"):
        reward_zoo.get("mean_brightness", offset=1)


def test_entry_points_absent_without_the_distribution():
    assert "mean_brightness" not in reward_zoo.names()


def test_register_refuses_taken_names_and_merges_the_same_entry_point(tmp_path, monkeypatch):
    import mogen  # noqa: F401  (registers toy_verifier)

    reward_zoo.register("toy_verifier", "mogen.toyworld.scorer:ToyVerifier")  # the same target again: a no-op
    for name in ("toy_verifier", "ocr"):
        with pytest.raises(ValueError, match=f"the reward name '{name}' is taken"):
            reward_zoo.register(name, "elsewhere.module:Other")
    with pytest.raises(ValueError, match="must be 'package.module:Class'"):
        reward_zoo.register("new_name", "no_colon")
    # an installed entry point with the registered target (mogen's own, once installed) is the same reward
    dist = tmp_path / "mogen_again-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mogen-again\nVersion: 0.1\n")
    entry = "[mogen.rewards]\ntoy_verifier = mogen.toyworld.scorer:ToyVerifier\n"
    (dist / "entry_points.txt").write_text(entry)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reward_zoo.names().count("toy_verifier") == 1
    (dist / "entry_points.txt").write_text(entry.replace("mogen.toyworld.scorer:ToyVerifier", "elsewhere.module:Other"))
    with pytest.warns(UserWarning, match="reuses the registered reward name 'toy_verifier'"):
        assert reward_zoo.names().count("toy_verifier") == 1
    assert reward_zoo.available()["toy_verifier"].source == "mogen"


# --- model-free scorers ---------------------------------------------------------------------------


def _jpeg_kb(image: torch.Tensor, quality: int) -> float:
    buffer = io.BytesIO()
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return len(buffer.getvalue()) / 1000


def test_compressibility_is_minus_jpeg_kilobytes_and_prefers_flat_images():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = _images(1, 64)
    images = torch.cat([flat, noisy])
    comp = reward_zoo.get("compressibility", quality=80)(images)
    incomp = reward_zoo.get("incompressibility", quality=80)(images)
    expected = torch.tensor([_jpeg_kb(flat[0], 80), _jpeg_kb(noisy[0], 80)])
    torch.testing.assert_close(comp.scores, -expected)
    torch.testing.assert_close(incomp.scores, expected)
    torch.testing.assert_close(comp.details["jpeg_kb"], expected)
    assert comp.scores[0] > comp.scores[1] and incomp.scores[1] > incomp.scores[0]


def test_vivid_orders_gray_below_saturated_and_matches_its_formula():
    gray = torch.full((1, 3, 16, 16), 0.5)
    red_blue = torch.zeros(1, 3, 16, 16)
    red_blue[0, 0, :, :8] = 1.0
    red_blue[0, 2, :, 8:] = 1.0
    result = reward_zoo.get("vivid")(torch.cat([gray, red_blue]))
    assert result.scores[0] == 0.0  # no saturation, no contrast
    luma = torch.where(torch.arange(16) < 8, 0.299, 0.114).expand(16, 16)
    expected_contrast = 2 * luma.std(unbiased=False)
    torch.testing.assert_close(result.details["saturation"][1], torch.tensor(1.0))
    torch.testing.assert_close(result.details["contrast"][1], expected_contrast)
    torch.testing.assert_close(result.scores[1], 0.5 * (1.0 + expected_contrast))


@pytest.mark.parametrize("name", ["compressibility", "incompressibility", "vivid"])
def test_simple_scorers_are_deterministic_and_batch_invariant(name):
    scorer = reward_zoo.get(name)
    images = _images(6)
    whole = scorer(images).scores
    halves = torch.cat([scorer(images[:3]).scores, scorer(images[3:]).scores])
    assert whole.shape == (6,) and whole.dtype == torch.float32
    torch.testing.assert_close(whole, halves)
    torch.testing.assert_close(whole, scorer(images).scores, rtol=0, atol=0)


def test_score_result_stays_on_the_images_device_and_dtype_float32():
    result = reward_zoo.get("vivid")(_images(2).double())
    assert result.scores.dtype == torch.float32 and result.scores.device == torch.device("cpu")
    assert isinstance(result, ScoreResult) and len(result) == 2


# --- folder scoring and CLI -------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, value in enumerate([0, 128, 255]):
        Image.new("RGB", (24, 24), (value, 0, 255 - value)).save(folder / f"img_{i:02d}.png")
    Image.new("RGB", (40, 20), (10, 200, 30)).save(folder / "z_wide.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_read_folder_text_prompts_follow_sorted_filenames(image_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\nc\nd\n")
    items = read_folder(image_folder, prompts)
    assert [(i.file, i.prompt) for i in items] == [
        ("img_00.png", "a"), ("img_01.png", "b"), ("img_02.png", "c"), ("z_wide.png", "d")]
    prompts.write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 lines for 4 images"):
        read_folder(image_folder, prompts)


def test_read_folder_jsonl(image_folder, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"file": "img_02.png", "prompt": "x", "metadata": {"text": "K"}}) + "\n")
    items = read_folder(image_folder, prompts)
    assert len(items) == 1 and items[0].metadata == {"text": "K"}
    prompts.write_text('{"file": "missing.png", "prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: image .*missing.png does not exist"):
        read_folder(image_folder, prompts)
    prompts.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: not valid JSON"):
        read_folder(image_folder, prompts)


def test_cli_score_writes_per_image_scores(image_folder, tmp_path):
    from mogen.cli import app

    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        app, ["rewards", "score", "--reward", "incompressibility", "--images", str(image_folder),
              "--set", "quality=90", "--batch-size", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == ["img_00.png", "img_01.png", "img_02.png", "z_wide.png"]
    for row in rows:
        pixels = torch.from_numpy(np.asarray(Image.open(image_folder / row["file"]))).permute(2, 0, 1)
        assert row["score"] == pytest.approx(_jpeg_kb(pixels.float() / 255, 90), abs=1e-6)
    assert "4 images, 0 failed" in result.output


def test_cli_errors_are_one_line(image_folder):
    from mogen.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["rewards", "score", "--reward", "nope", "--images", str(image_folder)])
    assert result.exit_code == 2 and "unknown reward 'nope'" in result.output
    result = runner.invoke(app, ["rewards", "score", "--reward", "vivid", "--images", str(image_folder), "--set", "x"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
    result = runner.invoke(app, ["rewards", "list"])
    assert result.exit_code == 0 and "compressibility" in result.output and "pickscore" in result.output
