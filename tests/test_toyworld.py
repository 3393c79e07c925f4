"""The toy world: grammar, split, sampling and the pixel verifier (real tesseract for the letters)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mogen.toyworld import (
    ATTRIBUTES,
    COLORS,
    KINDS,
    HELD_OUT,
    LETTERS,
    TASKS,
    enumerate_prompts,
    find_objects,
    format_prompt,
    object_size,
    parse_prompt,
    render_batch,
    render_scene,
    sample_batch,
    sample_scenes,
    scene_from_prompt,
    split_of,
    verify,
)
from mogen.toyworld.scenes import COUNT_WORDS, MIN_GAP


def _rendered(prompts: list[str], seed: int = 0, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return render_batch([scene_from_prompt(p, rng, size) for p in prompts])


# ----------------------------------------------------------------------------- grammar and split


def test_every_prompt_round_trips_through_the_parser():
    prompts = enumerate_prompts("all")
    assert len(prompts) == len(set(prompts)) == 6 * 3 * 4 + 2 * 18 * 17 + 26 * 6
    for prompt in prompts:
        assert format_prompt(parse_prompt(prompt)) == prompt


def test_parser_accepts_user_variants_and_names_bad_prompts():
    assert parse_prompt("  Two RED circles. ") == parse_prompt("two red circles")
    assert parse_prompt("one blue square") == parse_prompt("a blue square")
    assert parse_prompt("a red circle to the left of an orange square").relation == "left of"
    assert parse_prompt('the letter "k" on a yellow background').letter == "K"
    for bad in ["two red circle", "a red circles", "a cyan circle", "a red circle left of a red circle", "a cat"]:
        with pytest.raises(ValueError, match="prompt"):
            parse_prompt(bad)
    images = _rendered(["a red circle", "two red circles"])
    with pytest.raises(ValueError, match=r"prompts\[1\].*'five red circles'"):
        verify(images, ["a red circle", "five red circles"])


def test_split_is_disjoint_and_keeps_the_vocabulary_in_training():
    train, heldout = enumerate_prompts("train"), enumerate_prompts("heldout")
    assert set(train).isdisjoint(heldout)
    assert sorted(train + heldout) == sorted(enumerate_prompts("all"))
    for task in TASKS:
        assert enumerate_prompts("train", task) and enumerate_prompts("heldout", task)
    seen_colors, seen_kinds, seen_counts, seen_letters = set(), set(), set(), set()
    for prompt in train:
        spec = parse_prompt(prompt)
        assert not any((it.color, it.kind) in HELD_OUT.color_kind for it in spec.items), prompt
        if spec.task == "count":
            assert (spec.count, spec.items[0].kind) not in HELD_OUT.count_kind, prompt
            seen_counts.add(spec.count)
        if spec.task == "text":
            assert spec.letter not in HELD_OUT.letters, prompt
            seen_letters.add(spec.letter)
            seen_colors.add(spec.background)
        seen_colors.update(it.color for it in spec.items)
        seen_kinds.update(it.kind for it in spec.items)
    assert seen_colors == set(COLORS) and seen_kinds == set(KINDS) and seen_counts == set(COUNT_WORDS)
    assert seen_letters == set(LETTERS) - HELD_OUT.letters
    # Every held-out prompt contains at least one held-out combination.
    assert all(split_of(parse_prompt(p)) == "heldout" for p in heldout)
    # Sampling respects the split.
    rng = np.random.default_rng(0)
    assert all(s.prompt in set(heldout) for s in sample_scenes(200, rng, split="heldout"))
    assert all(s.prompt in set(train) for s in sample_scenes(200, rng, split="train"))


# ----------------------------------------------------------------------------- sampling and rendering


def test_sampling_is_deterministic_under_a_seed():
    prompts_a, images_a = sample_batch(32, 7)
    prompts_b, images_b = sample_batch(32, np.random.default_rng(7))
    assert prompts_a == prompts_b and torch.equal(images_a, images_b)
    prompts_c, images_c = sample_batch(32, 8)
    assert prompts_c != prompts_a and not torch.equal(images_c, images_a)
    assert enumerate_prompts("train") == enumerate_prompts("train")
    stream_a, stream_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first_a, first_b = sample_batch(8, stream_a), sample_batch(8, stream_b)
    assert first_a[0] == first_b[0] and torch.equal(first_a[1], first_b[1])
    assert sample_batch(8, stream_a)[0] != first_a[0]  # the stream advances
    assert images_a.shape == (32, 3, 32, 32) and images_a.dtype == torch.float32
    assert 0.0 <= images_a.min() and images_a.max() <= 1.0


@pytest.mark.parametrize("size", [32, 64])
def test_scenes_have_separated_objects_of_the_right_colours(size):
    rng = np.random.default_rng(1)
    for scene in sample_scenes(150, rng, tasks=("count", "position"), size=size):
        spec = scene.spec
        assert len(scene.objects) == (spec.count if spec.task == "count" else 2)
        for i, a in enumerate(scene.objects):
            assert 0 <= a.bbox[0] < a.bbox[2] <= size and 0 <= a.bbox[1] < a.bbox[3] <= size
            assert abs((a.bbox[2] - a.bbox[0]) - object_size(size)) <= 1
            for b in scene.objects[i + 1 :]:
                gap = max(b.bbox[0] - a.bbox[2], a.bbox[0] - b.bbox[2], b.bbox[1] - a.bbox[3], a.bbox[1] - b.bbox[3])
                assert gap >= MIN_GAP, scene
        if spec.task == "position":
            a, b = scene.objects
            axis = 0 if spec.relation == "left of" else 1
            assert a.centroid[axis] < b.centroid[axis]
        pixels = np.asarray(render_scene(scene)).reshape(-1, 3)
        allowed = {(255, 255, 255)} | {COLORS[o.color] for o in scene.objects}
        assert {tuple(p) for p in np.unique(pixels, axis=0)} <= allowed


# ----------------------------------------------------------------------------- verifier


def _applicable_means(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(np.nanmean(v.numpy())) for k, v in result.items() if not torch.isnan(v).all()}


@pytest.mark.parametrize("size", [32, 64])
def test_verifier_is_accurate_on_ground_truth_objects(size):
    rng = np.random.default_rng(2)
    scenes = sample_scenes(150, rng, split="train", tasks=("count", "position"), size=size)
    scenes += sample_scenes(150, rng, split="heldout", tasks=("count", "position"), size=size)
    result = verify(render_batch(scenes), [s.prompt for s in scenes])
    means = _applicable_means(result)
    for attribute in ("count", "color", "shape", "position"):
        assert means[attribute] >= 0.95, (attribute, means)
    # The recovered geometry matches the scene spec, not just the score.
    for scene in scenes[:40]:
        found, junk = find_objects(np.asarray(render_scene(scene), dtype=np.float32) / 255)
        assert junk == 0 and len(found) == len(scene.objects)
        truth = sorted((o.color, o.kind, o.centroid) for o in scene.objects)
        seen = sorted((o.color, o.kind, o.centroid) for o in found)
        for (tc, tk, (tx, ty)), (sc, sk, (sx, sy)) in zip(truth, seen):
            assert (tc, tk) == (sc, sk) and abs(tx - sx) < 1.0 and abs(ty - sy) < 1.0


def test_verifier_reads_letters_with_tesseract():
    rng = np.random.default_rng(3)
    scenes = sample_scenes(30, rng, split="train", tasks=("text",)) + sample_scenes(18, rng, split="heldout", tasks=("text",))
    result = verify(render_batch(scenes), [s.prompt for s in scenes])
    means = _applicable_means(result)
    assert set(means) == {"color", "text", "overall", "all_correct"}
    assert means["color"] == 1.0 and means["text"] >= 0.95, means
    # The same images against another letter / background colour score 0 on that attribute.
    other = [f"the letter {'Z' if s.spec.letter != 'Z' else 'A'} on a {s.spec.background} background" for s in scenes[:8]]
    assert verify(render_batch(scenes[:8]), other)["text"].sum() <= 1
    wrong_bg = [f"the letter {s.spec.letter} on a {'red' if s.spec.background != 'red' else 'blue'} background" for s in scenes[:8]]
    assert verify(render_batch(scenes[:8]), wrong_bg)["color"].sum() == 0


def test_not_applicable_attributes_are_nan_and_overall_is_their_mean():
    prompts = ["two red circles", "a blue square left of a green triangle", "the letter K on a yellow background"]
    result = verify(_rendered(prompts), prompts)
    applicable = {
        0: {"count", "color", "shape"},
        1: {"count", "color", "shape", "position"},
        2: {"color", "text"},
    }
    for i, names in applicable.items():
        for name in ATTRIBUTES:
            assert math.isnan(result[name][i]) == (name not in names), (i, name)
        values = [float(result[n][i]) for n in names]
        assert float(result["overall"][i]) == pytest.approx(sum(values) / len(values))
        assert float(result["all_correct"][i]) == float(all(v == 1.0 for v in values))


def test_corrupted_images_score_low():
    rng = np.random.default_rng(4)
    scenes = sample_scenes(40, rng, tasks=("count", "position"))
    prompts = [s.prompt for s in scenes]
    images = render_batch(scenes)
    generator = torch.Generator().manual_seed(0)
    blank = verify(torch.ones_like(images), prompts)
    assert blank["overall"].max() == 0.0
    noise = verify(torch.rand(images.shape, generator=generator), prompts)
    assert noise["overall"].mean() < 0.2 and noise["all_correct"].max() == 0.0
    # Permuting the channels maps every palette hue to another hue: colour must fail.
    recoloured = verify(images[:, [2, 0, 1]], prompts)
    assert recoloured["color"].mean() < 0.1 and recoloured["all_correct"].max() == 0.0
    assert recoloured["shape"].mean() > 0.95  # ... while shapes are untouched
    # An extra object: three red circles scored as "two red circles".
    extra = verify(_rendered(["three red circles"] * 8), ["two red circles"] * 8)
    assert torch.allclose(extra["count"], torch.full((8,), 2 / 3)) and extra["all_correct"].max() == 0.0
    # A mismatched prompt.
    mismatched = verify(_rendered(["two red circles"] * 8), ["three blue squares"] * 8)
    assert mismatched["overall"].max() < 0.3 and mismatched["color"].max() == 0.0
    # The relation reversed: objects right, position wrong.
    swapped = verify(_rendered(["a red circle left of a blue square"] * 8), ["a blue square left of a red circle"] * 8)
    assert swapped["position"].max() == 0.0 and swapped["color"].min() == 1.0 and swapped["shape"].min() == 1.0
    above = verify(_rendered(["a red circle above a blue square"] * 8).flip(2), ["a red circle above a blue square"] * 8)
    assert above["position"].max() == 0.0


def test_verify_validates_input_and_keeps_the_device():
    prompts = ["a red circle", "two green triangles"]
    images = _rendered(prompts)
    result = verify(images.double(), prompts)
    assert all(v.dtype == torch.float32 and v.shape == (2,) and v.device == images.device for v in result.values())
    assert result["all_correct"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        verify(images.permute(0, 2, 3, 1), prompts)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        verify(images, prompts[:1])
