"""mogen.trajectory.sample_trajectory: the one sampling loop, checked against the kernels applied by hand."""

from __future__ import annotations

import pytest
import torch

from mogen.sampling import cps_step, flow_sde_step, ode_step, timesteps
from mogen.trajectory import sample_trajectory


def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth field that depends on x and t (t arrives as a (B,) tensor, as adapters receive it)."""
    assert t.shape == (x.shape[0],)
    return torch.sin(x) - 0.5 * t.view(-1, 1, 1, 1) * x


def test_ode_trajectory_is_euler_by_hand_and_reports_every_step():
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    times = timesteps(6, shift=3.0)
    seen = []
    out = sample_trajectory(velocity, x0, times, on_step=lambda i, x_t, step: seen.append((i, x_t, step)))
    x = x0
    for i in range(6):
        assert seen[i][0] == i and torch.equal(seen[i][1], x) and seen[i][2].log_prob is None
        x = ode_step(velocity(x, times[i].expand(3)), x, times[i], times[i + 1]).prev_sample
    assert torch.equal(out, x)


@pytest.mark.parametrize(("kind", "kernel"), [("sde", flow_sde_step), ("cps", cps_step)])
def test_stochastic_steps_draw_noise_in_order_and_only_there(kind, kernel):
    x0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    times = timesteps(5)
    noises = [torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(10 + k)) for k in range(2)]
    draws = iter(noises)
    calls = []
    out = sample_trajectory(
        velocity, x0, times, stochastic={1, 3}, kind=kind, eta=0.7, noise=lambda: calls.append(1) or next(draws)
    )
    assert len(calls) == 2
    x, used = x0, iter(noises)
    for i in range(5):
        v, t, t_next = velocity(x, times[i].expand(2)), times[i], times[i + 1]
        step = kernel(v, x, t, t_next, 0.7, noise=next(used)) if i in (1, 3) else ode_step(v, x, t, t_next)
        x = step.prev_sample
    assert torch.equal(out, x)


def test_mean_at_end_returns_the_last_steps_mean_not_its_noisy_sample():
    x0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    times = timesteps(3)
    noise = torch.ones(2, 1, 3, 3)
    last = []
    sample = sample_trajectory(velocity, x0, times, stochastic=range(3), eta=0.5, noise=lambda: noise,
                               on_step=lambda i, x_t, step: last.append(step))
    mean = sample_trajectory(velocity, x0, times, stochastic=range(3), eta=0.5, noise=lambda: noise, mean_at_end=True)
    assert torch.equal(sample, last[-1].prev_sample) and torch.equal(mean, last[-1].mean)
    assert not torch.equal(sample, mean)  # the last SDE step (t_next = 0) still has a nonzero std


def test_bad_calls_are_refused():
    x0 = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="noise source"):
        sample_trajectory(velocity, x0, timesteps(2), stochastic={0})
    with pytest.raises(ValueError, match="at least two times"):
        sample_trajectory(velocity, x0, torch.ones(1))
