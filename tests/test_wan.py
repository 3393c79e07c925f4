"""Wan 2.1 text-to-video on a tiny random-weight WanPipeline saved to disk and loaded back, and videos through the
loop: image scorers on sampled frames, frame-strip sample grids, GIFs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from PIL import Image
from typer.testing import CliRunner

import reward_zoo
from family_checks import CPU, PROMPTS, check_first_update, check_frozen, check_lora_export, train_recipe_one_step
from mogen.cli import app
from mogen.config import ConfigError, ModelConfig, RewardConfig
from mogen.models.loading import load_policy
from mogen.models.wan import WanPolicy
from mogen.rewards import Objectives
from mogen.samples import frame_strips, labelled_grid, save_gifs
from mogen.sampling import ode_step
from tiny_families import VIDEO_FRAMES, save_wan_pipeline
from tiny_pipelines import IMAGE_SIZE, LATENT_CHANNELS

RECIPE = Path(__file__).parents[1] / "recipes" / "wan" / "t2v_clip_pickscore_grpo.yaml"
TEXT_LENGTH = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_wan_pipeline(tmp_path_factory.mktemp("models") / "wan")


def load(folder: Path, guidance_scale: float = 5.0) -> WanPolicy:
    return WanPolicy.from_pretrained(folder, CPU, torch.float32, guidance_scale, resolution=IMAGE_SIZE, num_frames=VIDEO_FRAMES,
                                     max_sequence_length=TEXT_LENGTH)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0], ids=["no-cfg", "cfg"])
def test_sampling_reproduces_the_pipeline(folder, guidance_scale):
    """Latents with a time axis, timestep = 1000 t, CFG on the empty prompt, the latents' mean/std: as WanPipeline.

    mogen's Euler step runs on the pipeline's own sigmas (its scheduler spaces them from sigma_min, not 1/N)."""
    policy = load(folder, guidance_scale)
    assert policy.latent_shape == (LATENT_CHANNELS, 2, IMAGE_SIZE // 4, IMAGE_SIZE // 4)  # 5 frames -> 2 latent frames
    check_frozen(policy)
    assert policy.schedule_shift == 3.0
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    pipe = WanPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    final = {}

    def keep_latents(pipeline, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    expected = pipe(prompt=list(PROMPTS), height=IMAGE_SIZE, width=IMAGE_SIZE, num_frames=VIDEO_FRAMES, num_inference_steps=3,
                    guidance_scale=guidance_scale, latents=noise, max_sequence_length=TEXT_LENGTH, output_type="pt",
                    callback_on_step_end=keep_latents).frames
    sigmas = pipe.scheduler.sigmas
    cond = policy.encode_prompts(PROMPTS)
    assert ("negative_prompt_embeds" in cond) == (guidance_scale > 1)
    x = noise
    with torch.no_grad():
        for t, t_next in zip(sigmas[:-1], sigmas[1:]):
            x = ode_step(policy.velocity(x, t.expand(2), cond), x, t, t_next).prev_sample
    torch.testing.assert_close(x, final["latents"], rtol=1e-5, atol=1e-5)
    videos = policy.decode(x)
    assert videos.shape == (2, VIDEO_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE) and videos.std() > 0.01
    torch.testing.assert_close(videos, expected, rtol=1e-5, atol=1e-5)


def test_rollout_and_first_update_have_ratio_one(folder):
    check_first_update(load(folder))


def test_exported_lora_loads_into_a_fresh_pipeline(folder, tmp_path):
    check_lora_export(
        load(folder), "wan", lambda: WanPipeline.from_pretrained(folder, local_files_only=True),
        lambda pipe: WanPolicy(pipe, CPU, resolution=IMAGE_SIZE, num_frames=VIDEO_FRAMES, max_sequence_length=TEXT_LENGTH),
        tmp_path / "lora",
    )


def test_recipe_validates_and_trains_a_step_writing_a_video_grid(folder, tmp_path):
    metrics = train_recipe_one_step(RECIPE, folder, IMAGE_SIZE, tmp_path / "run", [f"model.max_sequence_length={TEXT_LENGTH}"])
    assert metrics["update/ratio_min"] <= 1.0 <= metrics["update/ratio_max"] and metrics["kl/old_new"] > 0
    assert metrics["reward/vivid"] > 0
    grid = Image.open(tmp_path / "run" / "samples" / "step-1.png")
    assert grid.width > VIDEO_FRAMES * IMAGE_SIZE  # each sample a strip of its frames


def test_image_scorers_score_sampled_frames_of_a_video():
    """The frames a reward sees, and the mean / min over them, against the scorer on those frames directly."""
    videos = torch.rand(3, 9, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    videos[1, 4] = 0.5  # a grey frame: vividness 0
    prompts = ["a", "b", "c"]
    scorer = reward_zoo.get("vivid")
    assert reward_zoo.frame_indices(9, 3) == [0, 4, 8] and reward_zoo.frame_indices(9, [0, -1]) == [0, 8]
    per_frame = scorer(videos[:, [0, 4, 8]].flatten(0, 1), [p for p in prompts for _ in range(3)]).scores.view(3, 3)
    mean = reward_zoo.score_video(scorer, videos, prompts, frames=3, reduce="mean")
    torch.testing.assert_close(mean.scores, per_frame.mean(1))
    torch.testing.assert_close(mean.details["frame_4"], per_frame[:, 1])
    low = reward_zoo.score_video(scorer, videos, prompts, frames=3, reduce="min")
    assert low.scores[1] == 0 and torch.equal(low.scores, per_frame.amin(1))
    only_last = reward_zoo.score_video(scorer, videos, prompts, frames=[8])
    torch.testing.assert_close(only_last.scores, per_frame[:, 2])
    with pytest.raises(reward_zoo.ScorerConfigError, match="within the video's 9 frames"):
        reward_zoo.score_video(scorer, videos, prompts, frames=[9])
    objectives = Objectives.build([RewardConfig(name="vivid", frames=3, frame_reduce="min")], CPU)
    torch.testing.assert_close(objectives.score(videos, prompts).raw[0], per_frame.amin(1))


def test_video_grid_and_gifs(tmp_path):
    videos = torch.rand(2, 3, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    strips = frame_strips(videos)
    assert strips.shape == (2, 3, 8, 30) and torch.equal(strips[1, :, :, 10:20], videos[1, 1])
    assert labelled_grid(videos, ["a prompt"], per_row=2, scale=1).height == 8 + 2
    paths = save_gifs(videos, tmp_path, stem="a-prompt")
    assert [p.name for p in paths] == ["a-prompt-0.gif", "a-prompt-1.gif"]
    gif = Image.open(paths[1])
    assert gif.n_frames == 3 and gif.size == (10, 8)


def test_num_frames_is_for_video_models_only(folder, tmp_path):
    with pytest.raises(ConfigError, match="model.num_frames"):
        load_policy(ModelConfig(name=str(tmp_path), family="sd3", num_frames=5), CPU)
    with pytest.raises(ValueError, match="num_frames must be 4 k \\+ 1"):
        WanPolicy.from_pretrained(folder, resolution=IMAGE_SIZE, num_frames=6)


def test_mogen_sample_writes_a_grid_and_a_gif_per_prompt(folder, tmp_path):
    out = tmp_path / "samples" / "wan.png"
    args = ["sample", "--model", str(folder), "--family", "wan", "--resolution", str(IMAGE_SIZE), "--frames", str(VIDEO_FRAMES),
            "--guidance", "5", "--shift", "3", "--steps", "2", "-n", "2", "-p", "two red circles", "-p", "a blue square", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    grid = Image.open(out)
    assert grid.height == 2 * (4 * IMAGE_SIZE + 2)  # two prompt rows of frame strips
    gifs = sorted(out.parent.glob("wan-*.gif"))
    assert [g.name for g in gifs] == ["wan-0.gif", "wan-1.gif"]
    gif = Image.open(gifs[0])
    assert gif.n_frames == VIDEO_FRAMES and gif.size == (2 * IMAGE_SIZE, IMAGE_SIZE)  # the prompt's 2 videos side by side
    bad = CliRunner().invoke(app, [*args[:8], "6", *args[9:]])
    assert bad.exit_code == 2 and "num_frames must be 4 k + 1" in " ".join(bad.output.replace("│", " ").split())


def test_forgetting_probes_run_on_a_video_model(folder):
    """The training-time probe suite on videos: frame-scored verifier metrics, the exact KL to the base, diversity."""
    from mogen.config import LoraConfig
    from mogen.evaluation.probes import run_probes
    from mogen.evaluation.suite import load_suite
    from mogen.lora import attach_lora

    policy = load(folder, guidance_scale=1.0)
    attach_lora(policy.transformer, LoraConfig(rank=4, alpha=8))
    suite = load_suite(Path(__file__).parents[1] / "recipes" / "eval" / "toy_quick.yaml")
    for probe in suite.probes:
        probe.prompts.limit = 2
    suite.sampler.num_steps = 2
    metrics = run_probes(policy, suite)
    assert {"probe/heldout_count/count", "probe/heldout_position/position", "probe/kl_base/kl", "probe/diversity/pixel_distance"} <= set(metrics)
    assert metrics["probe/kl_base/kl"] == 0.0 and metrics["probe/diversity/pixel_distance"] > 0  # LoRA B = 0: the base model
