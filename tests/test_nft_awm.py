"""DiffusionNFT and AWM on hand-derived cases: the forward process, training times, the old-policy EMA, and
the two losses' gradients (see the derivations in mogen/nft.py and mogen/awm.py)."""

import copy

import pytest
import torch
from diffusers import SD3Transformer2DModel

from mogen.awm import awm_loss, matching_log_likelihood
from mogen.forward_process import (
    ema_update_,
    flow_matching_target,
    forward_noising,
    predicted_clean,
    ramped_decay,
    sample_training_times,
    velocity_penalty,
)
from mogen.config import LoraConfig
from mogen.lora import adapter_disabled, attach_lora, attach_old_policy, lora_state_dict, old_policy
from mogen.nft import nft_loss, optimality_probability
from mogen.objectives import group_normalize
from mogen.sampling import ode_step, timesteps


def _batch(shape=(4, 3, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    t = torch.rand(shape[0], generator=g) * 0.9 + 0.05
    v_old = flow_matching_target(x0, noise) + 0.5 * torch.randn(shape, generator=g)
    return x0, noise, t, v_old


def _grad(loss_fn, v):
    v = v.clone().requires_grad_(True)
    loss, stats = loss_fn(v)
    (grad,) = torch.autograd.grad(loss, v)
    return grad, loss, stats


def _expand(x, like):
    return x.view(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------- forward process


@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 4, 3, 6, 6)])
def test_forward_noising_matches_mogens_ode_convention(shape) -> None:
    """x_1 = eps, x_0 = x0; an Euler ODE step with v* = eps - x0 stays on the path; x_t - t v* = x0."""
    x0, noise, t, _ = _batch(shape)
    torch.testing.assert_close(forward_noising(x0, noise, torch.ones(shape[0])), noise)
    torch.testing.assert_close(forward_noising(x0, noise, torch.zeros(shape[0])), x0)
    target = flow_matching_target(x0, noise)
    x_t = forward_noising(x0, noise, t)
    t_next = t * 0.6
    stepped = ode_step(target, x_t, t, t_next).prev_sample
    torch.testing.assert_close(stepped, forward_noising(x0, noise, t_next))
    torch.testing.assert_close(predicted_clean(x_t, target, t), x0)
    assert forward_noising(x0.bfloat16(), noise.bfloat16(), t).dtype == torch.float32
    with pytest.raises(ValueError, match="time must have shape"):
        forward_noising(x0, noise, t[:1])


def test_grid_schemes_draw_from_the_samplers_step_times() -> None:
    grid = timesteps(10, shift=3.0)
    steps = grid[:-1]
    g = torch.Generator().manual_seed(1)
    subset = sample_training_times("grid_subset", 9, 64, grid=grid, generator=g)
    assert subset.shape == (9, 64)
    for column in subset.T:  # per sample: 9 distinct step times out of 10, none is the final t = 0
        assert len(set(column.tolist())) == 9
        assert set(column.tolist()) <= set(steps.tolist())
    stratified = sample_training_times("grid_stratified", 6, 5, grid=timesteps(14, 3.0), fraction=0.9,
                                       include_init=False, generator=g)
    allowed = timesteps(14, 3.0)[1:12].tolist()  # indices 1 .. int(14 * 0.9) - 1 = 11
    assert stratified.shape == (6, 5)
    assert (stratified == stratified[:, :1]).all()  # one set of times for the whole batch, as the reference
    assert set(stratified[:, 0].tolist()) <= set(allowed) and len(set(stratified[:, 0].tolist())) == 6
    with_init = torch.stack([sample_training_times("grid_stratified", 3, 1, grid=grid, generator=g) for _ in range(50)])
    assert (with_init == 1.0).any()
    with pytest.raises(ValueError, match="needs the sampler's grid"):
        sample_training_times("grid_subset", 2, 2)
    with pytest.raises(ValueError, match="exceeds"):
        sample_training_times("grid_subset", 11, 2, grid=grid)


def test_continuous_schemes_are_stratified_shifted_and_seeded() -> None:
    uniform = sample_training_times("uniform", 8, 32, generator=torch.Generator().manual_seed(0))
    strata = (uniform.sort(dim=0).values * 8).floor()  # one draw per stratum [k/8, (k+1)/8) in every column
    torch.testing.assert_close(strata, torch.arange(8.0)[:, None].expand(8, 32))
    shifted = sample_training_times("uniform", 8, 32, shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, 3 * uniform / (1 + 2 * uniform))
    a = sample_training_times("logit_normal", 6, 4, shift=3.0, generator=torch.Generator().manual_seed(5))
    b = sample_training_times("logit_normal", 6, 4, shift=3.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert ((a > 0) & (a < 1)).all()
    with pytest.raises(ValueError, match="time scheme must be one of"):
        sample_training_times("cosine", 2, 2)


def test_old_policy_decay_ramps_as_the_reference() -> None:
    """DiffusionNFT return_decay type 1 (default) and type 2 (OCR); AWM's EMA-KL 'linear' ramp."""
    assert [ramped_decay(s, 0.001, 0.5) for s in (0, 100, 499, 5000)] == pytest.approx([0.0, 0.1, 0.499, 0.5])
    assert [ramped_decay(s, 0.0075, 0.999, flat_steps=75) for s in (10, 75, 175, 10_000)] == pytest.approx(
        [0.0, 0.0, 0.75, 0.999]
    )
    assert ramped_decay(250, 0.001, 0.3) == pytest.approx(0.25)


def test_ema_update_blends_lagging_lora_weights() -> None:
    current = [torch.randn(3, 4), torch.randn(5)]
    lagging = [torch.zeros(3, 4), torch.ones(5)]
    expected = [0.25 * old + 0.75 * new for old, new in zip(lagging, current)]
    ema_update_(lagging, current, decay=0.25)
    for got, want in zip(lagging, expected):
        torch.testing.assert_close(got, want)
    ema_update_(lagging, current, decay=0.0)  # decay 0: the old policy becomes the current one
    for got, want in zip(lagging, current):
        torch.testing.assert_close(got, want)
    low_precision = [torch.zeros(2, dtype=torch.bfloat16)]
    ema_update_(low_precision, [torch.ones(2)], decay=0.5)
    assert low_precision[0].dtype == torch.bfloat16 and low_precision[0].eq(0.5).all()
    with pytest.raises(ValueError, match="decay must be in"):
        ema_update_(lagging, current, decay=1.5)


# ---------------------------------------------------------------- DiffusionNFT


def test_optimality_probability_maps_clipped_advantages_to_unit_interval() -> None:
    r = optimality_probability(torch.tensor([0.0, 5.0, -7.0, 2.5, -1.0]), clip=5.0)
    torch.testing.assert_close(r, torch.tensor([0.5, 1.0, 0.0, 0.75, 0.4]))


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_nft_first_step_is_advantage_weighted_x0_regression(beta) -> None:
    """At v = v_old: grad_v = c (2r - 1) 2 t^2 (v - v*) / (w D B), w = mean |t (v_old - v*)|, for every beta."""
    x0, noise, t, v_old = _batch()
    r = torch.tensor([1.0, 0.8, 0.3, 0.0])
    grad, _, stats = _grad(lambda v: nft_loss(v, v_old, x0, noise, t, r, beta=beta), v_old)
    target = flow_matching_target(x0, noise)
    t_b = _expand(t, x0)
    w = (t_b * (v_old - target)).abs().mean(dim=(1, 2, 3), keepdim=True)
    d, b = x0[0].numel(), x0.shape[0]
    expected = 5.0 * _expand(2 * r - 1, x0) * 2 * t_b**2 * (v_old - target) / (w * d * b)
    torch.testing.assert_close(grad, expected)
    assert stats.old_deviation == 0 and stats.positive_loss == pytest.approx(stats.negative_loss.item())


def test_nft_equal_rewards_give_no_update() -> None:
    """A group whose rewards are all equal has A = 0, so r = 1/2: the first step's gradient vanishes."""
    x0, noise, t, v_old = _batch()
    advantages = group_normalize(torch.full((4,), 0.7), torch.zeros(4, dtype=torch.long), std_floor=1e-4)
    r = optimality_probability(advantages)
    torch.testing.assert_close(r, torch.full((4,), 0.5))
    grad, _, _ = _grad(lambda v: nft_loss(v, v_old, x0, noise, t, r), v_old)
    assert grad.abs().max() < 1e-7


def test_nft_with_r_one_and_beta_one_is_flow_matching_on_own_samples() -> None:
    """r = 1, beta = 1: loss = c mean_b t^2 mean_d (v - v*)^2 / w, whatever the old policy."""
    x0, noise, t, v_old = _batch()
    v = torch.randn_like(x0)
    target = flow_matching_target(x0, noise)
    t_b = _expand(t, x0)
    mse = (v - target).pow(2).mean(dim=(1, 2, 3))
    w = (t_b * (v - target)).abs().mean(dim=(1, 2, 3))
    ones = torch.ones(4)
    loss, _ = nft_loss(v, v_old, x0, noise, t, ones, beta=1.0)
    torch.testing.assert_close(loss, (5.0 * t**2 * mse / w).mean())
    other_old, _ = nft_loss(v, torch.randn_like(v), x0, noise, t, ones, beta=1.0)
    torch.testing.assert_close(other_old, loss)
    plain, _ = nft_loss(v, v_old, x0, noise, t, ones, beta=1.0, loss_scale=1.0, adaptive_weighting=False)
    torch.testing.assert_close(plain, (t**2 * mse).mean())


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_nft_minimiser_moves_old_velocity_toward_target_by_2r_minus_1_over_beta(beta) -> None:
    """Without adaptive weights each sample's loss is quadratic, minimised at v_old + (2r - 1)(v* - v_old)/beta."""
    x0, noise, t, v_old = _batch()
    r = torch.tensor([1.0, 0.75, 0.5, 0.2])
    target = flow_matching_target(x0, noise)
    v_star = v_old + _expand((2 * r - 1) / beta, x0) * (target - v_old)
    grad, _, _ = _grad(lambda v: nft_loss(v, v_old, x0, noise, t, r, beta=beta, adaptive_weighting=False), v_star)
    assert grad.abs().max() < 1e-6
    grad_off, _, _ = _grad(lambda v: nft_loss(v, v_old, x0, noise, t, r, beta=beta, adaptive_weighting=False),
                           v_star + 0.1)
    assert grad_off.abs().max() > 1e-4


def test_nft_positive_samples_pull_and_negative_samples_push() -> None:
    """One gradient step from v_old: r > 1/2 moves v toward v* (error falls), r < 1/2 away (error rises)."""
    x0, noise, t, v_old = _batch()
    target = flow_matching_target(x0, noise)
    for r_value, sign in ((0.9, -1), (0.1, 1)):
        r = torch.full((4,), r_value)
        grad, _, _ = _grad(lambda v: nft_loss(v, v_old, x0, noise, t, r), v_old)
        stepped = v_old - 0.5 * grad
        before = (v_old - target).pow(2).mean(dim=(1, 2, 3))
        after = (stepped - target).pow(2).mean(dim=(1, 2, 3))
        assert (torch.sign(after - before) == sign).all()


def test_nft_small_beta_gives_a_gradient_independent_of_v() -> None:
    """beta -> 0: grad_v -> c (2r - 1) 2 t^2 (v_old - v*) / (D B) for any v (no implicit trust region)."""
    x0, noise, t, v_old = _batch()
    r = torch.tensor([0.9, 0.6, 0.4, 0.1])
    target = flow_matching_target(x0, noise)
    expected = 5.0 * _expand(2 * r - 1, x0) * 2 * _expand(t, x0) ** 2 * (v_old - target) / (x0[0].numel() * 4)
    for v in (v_old, v_old + 0.3 * torch.randn_like(v_old), target):
        grad, _, _ = _grad(lambda u: nft_loss(u, v_old, x0, noise, t, r, beta=1e-4, adaptive_weighting=False), v)
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-3)


def test_nft_video_equals_images_with_frames_folded_and_runs_in_float32() -> None:
    x0, noise, t, v_old = _batch((3, 4, 2, 5, 5))
    v = v_old + 0.1 * torch.randn_like(v_old)
    r = torch.tensor([0.2, 0.5, 0.9])
    video, _ = nft_loss(v, v_old, x0, noise, t, r, beta=0.5)
    folded = [a.reshape(3, 8, 5, 5) for a in (v, v_old, x0, noise)]
    image, _ = nft_loss(folded[0], folded[1], folded[2], folded[3], t, r, beta=0.5)
    torch.testing.assert_close(video, image)
    v_bf16 = v.bfloat16().requires_grad_(True)
    low, _ = nft_loss(v_bf16, v_old.bfloat16(), x0.bfloat16(), noise.bfloat16(), t, r, beta=0.5)
    low.backward()
    assert low.dtype == torch.float32 and v_bf16.grad.dtype == torch.bfloat16 and v_bf16.grad.isfinite().all()
    assert low.item() == pytest.approx(video.item(), rel=0.05)


def test_nft_reference_penalty_and_bad_input() -> None:
    x0, noise, t, v_old = _batch()
    v, v_ref = torch.randn_like(x0), torch.randn_like(x0)
    r = torch.full((4,), 0.7)
    base, _ = nft_loss(v, v_old, x0, noise, t, r)
    with_ref, stats = nft_loss(v, v_old, x0, noise, t, r, ref_velocity=v_ref, ref_beta=1e-4)
    torch.testing.assert_close(stats.ref_penalty, (v - v_ref).pow(2).mean())
    torch.testing.assert_close(with_ref, base + 1e-4 * stats.ref_penalty)
    torch.testing.assert_close(velocity_penalty(v, v), torch.zeros(4))
    with pytest.raises(ValueError, match="beta must be > 0"):
        nft_loss(v, v_old, x0, noise, t, r, beta=0.0)
    with pytest.raises(ValueError, match="r must have shape"):
        nft_loss(v, v_old, x0, noise, t, r[:2])


# ---------------------------------------------------------------- AWM


def test_awm_on_policy_gradient_is_advantage_weighted_flow_matching() -> None:
    """ratio = 1 at the first step: grad_v = a_b * d m_b-weighting / d v / B, a = clip(A, -5, 5) / 5."""
    x0, noise, t, v_old = _batch()
    target = flow_matching_target(x0, noise)
    advantages = torch.tensor([7.0, 1.5, 0.0, -2.5])
    a = torch.tensor([1.0, 0.3, 0.0, -0.5])
    d, b = x0[0].numel(), 4
    grad, loss, stats = _grad(lambda v: awm_loss(v, x0, noise, t, advantages, weighting="uniform"), v_old)
    torch.testing.assert_close(grad, _expand(a, x0) * 2 * (v_old - target) / (d * b))
    torch.testing.assert_close(loss, -a.mean())
    assert stats.ratio_min == 1 and stats.ratio_max == 1 and stats.clipped_fraction == 0
    m = (v_old - target).pow(2).mean(dim=(1, 2, 3))
    ghuber_grad, _, _ = _grad(lambda v: awm_loss(v, x0, noise, t, advantages), v_old)
    scale = a * t * (m + 1e-10) ** (0.25 - 1)  # d/dm of t ((m + e)^p - e^p) / p
    torch.testing.assert_close(ghuber_grad, _expand(scale, x0) * 2 * (v_old - target) / (d * b))


def test_awm_equal_advantages_give_zero_or_plain_flow_matching() -> None:
    x0, noise, t, v_old = _batch()
    target = flow_matching_target(x0, noise)
    zero_grad, zero_loss, _ = _grad(lambda v: awm_loss(v, x0, noise, t, torch.zeros(4)), v_old)
    assert zero_loss == 0 and zero_grad.abs().max() == 0
    v0 = v_old.clone().requires_grad_(True)
    (fm_grad,) = torch.autograd.grad((v0 - target).pow(2).mean(), v0)  # plain flow-matching loss
    grad, _, _ = _grad(lambda v: awm_loss(v, x0, noise, t, torch.full((4,), 2.0), weighting="uniform"), v_old)
    torch.testing.assert_close(grad, 0.4 * fm_grad)


def test_awm_ratio_clip_stops_updates_that_left_the_range() -> None:
    """With an old likelihood lower by more than log 2, rho > 1 + 1: a > 0 samples get no gradient."""
    x0, noise, t, v_old = _batch()
    target = flow_matching_target(x0, noise)
    ell = matching_log_likelihood(v_old, target, t, "uniform")
    old = ell - torch.tensor([1.0, 0.1, 1.0, 0.1])  # rho = e^1 (clipped for a > 0) or e^0.1 (inside)
    advantages = torch.tensor([2.0, 2.0, -2.0, -2.0])
    grad, _, stats = _grad(
        lambda v: awm_loss(v, x0, noise, t, advantages, old_log_likelihood=old, weighting="uniform"), v_old
    )
    assert grad[0].abs().max() == 0  # a > 0, rho above 1 + clip: clipped branch, constant
    assert grad[1].abs().max() > 0 and grad[2].abs().max() > 0 and grad[3].abs().max() > 0
    assert stats.clipped_fraction.item() == pytest.approx(0.25)
    assert stats.ratio_max.item() == pytest.approx(torch.e, rel=1e-5)


def test_awm_weightings_and_ghuber_with_power_one_is_t_weighting() -> None:
    x0, noise, t, v_old = _batch()
    target = flow_matching_target(x0, noise)
    m = (v_old - target).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(matching_log_likelihood(v_old, target, t, "uniform"), -m)
    torch.testing.assert_close(matching_log_likelihood(v_old, target, t, "t"), -t * m)
    torch.testing.assert_close(matching_log_likelihood(v_old, target, t, "ghuber", ghuber_power=1.0), -t * m)
    with pytest.raises(ValueError, match="weighting must be"):
        matching_log_likelihood(v_old, target, t, "elbo")


def test_awm_video_bf16_and_reference_penalty() -> None:
    x0, noise, t, v_old = _batch((2, 4, 3, 4, 4))
    advantages = torch.tensor([1.0, -1.0])
    v = v_old.bfloat16().requires_grad_(True)
    v_ref = v_old + 0.2
    loss, stats = awm_loss(v, x0.bfloat16(), noise.bfloat16(), t, advantages, ref_velocity=v_ref, ref_beta=1e-3)
    loss.backward()
    assert loss.dtype == torch.float32 and v.grad.dtype == torch.bfloat16 and v.grad.isfinite().all()
    assert stats.ref_penalty.item() == pytest.approx(0.04, rel=0.05)
    with pytest.raises(ValueError, match="advantages must have shape"):
        awm_loss(v_old, x0, noise, t, advantages[:1])


# ---------------------------------------------------------------- both, end to end on a 2-D toy


def _train_toy(algorithm: str, direction: float, iterations: int = 30) -> list[float]:
    """A 2-D velocity MLP, ODE rollouts from the sampling policy (NFT: the EMA old policy), reward = direction * x."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))
    old = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    grid = timesteps(8)

    def velocity(net, x, t):
        return net(torch.cat([x, t[:, None]], dim=1))

    mean_rewards = []
    for step in range(iterations):
        sampler = old if algorithm == "nft" else model
        x0 = torch.randn(64, 2, generator=g)
        with torch.no_grad():
            for t, t_next in zip(grid[:-1], grid[1:]):
                x0 = ode_step(velocity(sampler, x0, t.expand(64)), x0, t, t_next).prev_sample
        reward = direction * x0[:, 0]
        mean_rewards.append(reward.mean().item())
        advantages = group_normalize(reward, torch.zeros(64, dtype=torch.long), std_floor=1e-4)
        optimizer.zero_grad()
        times = sample_training_times("grid_subset", 4, 64, grid=grid, generator=g)
        for t in times:
            noise = torch.randn(x0.shape, generator=g)
            x_t = forward_noising(x0, noise, t)
            if algorithm == "nft":
                with torch.no_grad():
                    old_velocity = velocity(old, x_t, t)
                r = optimality_probability(advantages)
                loss, _ = nft_loss(velocity(model, x_t, t), old_velocity, x0, noise, t, r)
            else:
                loss, _ = awm_loss(velocity(model, x_t, t), x0, noise, t, advantages)
            (loss / len(times)).backward()
        optimizer.step()
        if algorithm == "nft":
            ema_update_(old.parameters(), model.parameters(), ramped_decay(step + 1, rate=0.001, cap=0.5))
    return mean_rewards


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_nft_and_awm_raise_a_toy_reward_with_ode_rollouts(algorithm, direction) -> None:
    """The pieces compose: ODE samples, group advantages, re-noising, the loss, the old-policy EMA."""
    rewards = _train_toy(algorithm, direction)
    assert abs(rewards[0]) < 0.3
    assert sum(rewards[-3:]) / 3 - rewards[0] > 0.7  # measured +1.33 to +1.41 at seed 0


# ---------------------------------------------------------------- the old policy as a second LoRA adapter


def test_old_policy_adapter_lags_the_trained_one_on_a_real_sd3_transformer() -> None:
    """A frozen copy of the LoRA that stays put through an optimizer step and follows it through ema_update_."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8,
    )
    trainable = attach_lora(transformer, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # a trained adapter, not peft's B = 0 start
        for p in trainable:
            p.add_(0.3 * torch.randn_like(p))
    old = attach_old_policy(transformer)
    assert len(old) == len(trainable) and not any(p.requires_grad for p in old)
    assert [p for p in transformer.parameters() if p.requires_grad] == trainable
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.4, 0.8])
    inputs = {"hidden_states": forward_noising(x0, noise, t), "timestep": t * 1000,
              "encoder_hidden_states": torch.randn(2, 3, 16), "pooled_projections": torch.randn(2, 8)}

    def velocity() -> torch.Tensor:
        return transformer(**inputs).sample

    with old_policy(transformer):
        v_old = velocity()
    v = velocity()
    torch.testing.assert_close(v_old, v)
    with adapter_disabled(transformer), torch.no_grad():
        assert (velocity() - v).abs().max() > 1e-3  # the base model differs from both

    loss, _ = nft_loss(v, v_old, x0, noise, t, torch.tensor([0.9, 0.2]), beta=0.1)
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    # the first step after a sync: grad = 5 (2r - 1) 2 t^2 (v - v*) / (w D B) != 0, none reaches the old adapter
    loss.backward()
    assert all(p.grad is None for p in old) and any(p.grad.abs().max() > 0 for p in trainable)
    optimizer.step()
    with old_policy(transformer):
        torch.testing.assert_close(velocity(), v_old)  # the old policy did not move
    with torch.no_grad():
        assert (velocity() - v_old).abs().max() > 1e-4
    assert [p.requires_grad for p in trainable] == [True] * len(trainable)  # restored after old_policy
    saved = lora_state_dict(transformer)  # checkpoints hold the trained adapter only
    assert len(saved) == len(trainable) and not any(".old." in key for key in saved)

    ema_update_(old, trainable, decay=0.0)
    with old_policy(transformer):
        v_synced = velocity()
    with torch.no_grad():
        torch.testing.assert_close(v_synced, velocity())
