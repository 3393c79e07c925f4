"""The step kernels: formulas, log-probs against torch.distributions, marginal preservation, dtypes."""

import math

import pytest
import torch

from mogen.sampling import cps_step, flow_sde_step, gaussian_log_prob, ode_step, timesteps

STOCHASTIC_STEPS = [flow_sde_step, cps_step]


def _inputs(batch: int = 4, shape: tuple[int, ...] = (3, 5, 5), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.randn(batch, *shape, generator=g)


def test_timesteps_endpoints_monotone_and_shift() -> None:
    t = timesteps(10)
    assert t.dtype == torch.float32 and t.shape == (11,)
    assert t[0] == 1.0 and t[-1] == 0.0
    assert torch.all(t[1:] < t[:-1])
    shifted = timesteps(10, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    torch.testing.assert_close(shifted, 3 * t / (1 + 2 * t))
    assert torch.all(shifted[1:-1] > t[1:-1]), "shift > 1 spends more steps at high noise"
    with pytest.raises(ValueError, match="num_steps"):
        timesteps(0)


def test_flow_sde_step_matches_its_equations() -> None:
    v, x = _inputs()
    t, t_next, eta = 0.6, 0.5, 0.7
    out = flow_sde_step(v, x, t, t_next, eta, noise=torch.zeros_like(x))
    sigma = eta * math.sqrt(t / (1 - t))
    dt = t_next - t
    expected_mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    torch.testing.assert_close(out.mean, expected_mean)
    torch.testing.assert_close(out.std, torch.full((4, 1, 1, 1), sigma * math.sqrt(-dt)))
    torch.testing.assert_close(out.prev_sample, out.mean)


def test_flow_sde_step_at_t_equal_one_uses_next_time_in_denominator() -> None:
    v, x = _inputs()
    out = flow_sde_step(v, x, 1.0, 0.9, 0.7)
    sigma = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.std, torch.full((4, 1, 1, 1), sigma * math.sqrt(0.1)))


def test_cps_step_matches_its_equations() -> None:
    v, x = _inputs()
    t, t_next, eta = 0.6, 0.5, 0.7
    out = cps_step(v, x, t, t_next, eta, noise=torch.zeros_like(x))
    x0_hat, x1_hat = x - t * v, x + (1 - t) * v
    torch.testing.assert_close(out.mean, (1 - t_next) * x0_hat + t_next * math.cos(eta * math.pi / 2) * x1_hat)
    torch.testing.assert_close(out.std, torch.full((4, 1, 1, 1), t_next * math.sin(eta * math.pi / 2)))


def test_cps_preserves_signal_and_noise_coefficients() -> None:
    """With the exact velocity v = eps - x0, x_next = (1 - t') x0 + t' * (unit-variance noise)."""
    g = torch.Generator().manual_seed(1)
    n, t, t_next, eta = 200_000, 0.7, 0.55, 0.8
    x0 = torch.randn(n, 1, generator=g) * 0.5 + 2.0
    eps = torch.randn(n, 1, generator=g)
    x_t = (1 - t) * x0 + t * eps
    out = cps_step(eps - x0, x_t, t, t_next, eta, generator=g)
    residual = out.prev_sample - (1 - t_next) * x0  # should be t_next * N(0, 1)
    assert abs(residual.mean().item()) < 0.01
    assert residual.var().item() == pytest.approx(t_next**2, rel=0.02)
    torch.testing.assert_close(out.mean - (1 - t_next) * x0, t_next * math.cos(eta * math.pi / 2) * eps)


def test_flow_sde_keeps_the_marginals_of_the_flow() -> None:
    """Integrate the SDE with the exact velocity of Gaussian data x0 ~ N(0, s^2): the end variance is s^2.

    For that data x_t ~ N(0, (1-t)^2 s^2 + t^2) and v(x, t) = E[eps - x0 | x_t] = (t - (1-t) s^2) / var_t * x.
    """
    g = torch.Generator().manual_seed(2)
    s2, n = 0.25, 100_000
    x = torch.randn(n, 1, generator=g)
    ts = timesteps(200)
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
        var_t = (1 - t) ** 2 * s2 + t**2
        v = (t - (1 - t) * s2) / var_t * x
        x = flow_sde_step(v, x, t, t_next, eta=0.7, generator=g).prev_sample
    assert x.var().item() == pytest.approx(s2, rel=0.05)
    assert abs(x.mean().item()) < 0.01


@pytest.mark.parametrize("step", STOCHASTIC_STEPS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_equals_torch_distributions(step, reduction: str) -> None:
    v, x = _inputs()
    out = step(v, x, 0.8, 0.7, 0.7, reduction=reduction)
    elementwise = torch.distributions.Normal(out.mean, out.std).log_prob(out.prev_sample)
    expected = elementwise.mean(dim=(1, 2, 3)) if reduction == "mean" else elementwise.sum(dim=(1, 2, 3))
    assert out.log_prob.shape == (4,)
    torch.testing.assert_close(out.log_prob, expected)


@pytest.mark.parametrize("step", STOCHASTIC_STEPS)
def test_scoring_own_sample_with_same_model_gives_ratio_one(step) -> None:
    """The rollout's log-prob and the update's recomputed log-prob agree exactly before any parameter change."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 6)
    x = torch.randn(8, 6)
    with torch.no_grad():
        rollout = step(model(x), x, 0.9, 0.8, 0.7, generator=torch.Generator().manual_seed(3))
    rescored = step(model(x), x, 0.9, 0.8, 0.7, prev_sample=rollout.prev_sample)
    assert torch.equal(rescored.log_prob, rollout.log_prob)
    assert torch.equal(torch.exp(rescored.log_prob - rollout.log_prob), torch.ones(8))
    assert torch.equal(rescored.mean, rollout.mean)


@pytest.mark.parametrize("step", STOCHASTIC_STEPS)
def test_given_noise_and_generator_are_deterministic(step) -> None:
    v, x = _inputs()
    a = step(v, x, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(7))
    b = step(v, x, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.prev_sample, b.prev_sample)
    noise = torch.randn_like(x)
    c = step(v, x, 0.5, 0.4, 0.7, noise=noise)
    torch.testing.assert_close(c.prev_sample, c.mean + c.std * noise)


@pytest.mark.parametrize("step", STOCHASTIC_STEPS)
def test_tensor_times_equal_per_sample_float_times(step) -> None:
    v, x = _inputs()
    t, t_next = torch.tensor([1.0, 0.9, 0.5, 0.3]), torch.tensor([0.9, 0.8, 0.4, 0.1])
    noise = torch.randn_like(x)
    batched = step(v, x, t, t_next, 0.7, noise=noise)
    for i in range(4):
        single = step(v[i : i + 1], x[i : i + 1], t[i].item(), t_next[i].item(), 0.7, noise=noise[i : i + 1])
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
    with pytest.raises(ValueError, match="shape"):
        step(v, x, torch.tensor([0.5, 0.4]), 0.3, 0.7)


@pytest.mark.parametrize("step", STOCHASTIC_STEPS)
def test_bfloat16_inputs_are_computed_in_float32(step) -> None:
    v, x = _inputs()
    v16, x16 = v.bfloat16(), x.bfloat16()
    noise = torch.randn_like(x)
    out = step(v16, x16, 0.6, 0.5, 0.7, noise=noise)
    reference = step(v16.float(), x16.float(), 0.6, 0.5, 0.7, noise=noise)
    for name in ("prev_sample", "mean", "std", "log_prob"):
        assert getattr(out, name).dtype == torch.float32, name
        assert torch.equal(getattr(out, name), getattr(reference, name)), name
    rescored = step(v16, x16, 0.6, 0.5, 0.7, prev_sample=out.prev_sample)
    assert torch.equal(rescored.log_prob, out.log_prob)


def test_ode_step_is_euler_without_log_prob() -> None:
    v, x = _inputs()
    out = ode_step(v.bfloat16(), x, 0.5, 0.3)
    torch.testing.assert_close(out.prev_sample, x + v.bfloat16().float() * -0.2)
    assert out.log_prob is None and torch.all(out.std == 0)


def test_ode_integrates_straight_paths_exactly() -> None:
    """For a single data point the velocity eps - x0 is constant along the path: Euler is exact."""
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    x = eps.clone()
    ts = timesteps(7, shift=3.0)
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
        x = ode_step(eps - x0, x, t, t_next).prev_sample
    torch.testing.assert_close(x, x0)


def test_gaussian_log_prob_reduction_is_validated() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="reduction"):
        gaussian_log_prob(x, x, torch.ones(2, 1), reduction="max")
