"""The sampling loop: every denoising trajectory in mogen (rollouts, image grids, probes, `TinyT2I.sample`) runs here.

    x_{t_{i+1}} = kernel(v(x_{t_i}, t_i), x_{t_i}, t_i, t_{i+1})      for i = 0 .. len(times) - 2

with the deterministic ODE kernel at every step except the `stochastic` ones, which use a Flow-SDE or CPS
kernel (mogen.sampling) with noise from the caller's `noise` source. The callers differ only in what they pass:
how the velocity is batched, where the noise comes from (the rollout draws it for the global batch on the device
generator and slices its shard; the probes draw it on the CPU so a seed gives the same images on any device),
and what they do with each step's StepOutput (`on_step`: the rollout records the trained steps, the KL probe
compares each step with the base model's).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch

from mogen.sampling import STEP_KERNELS, StepOutput, ode_step

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t as a (B,) tensor) -> v, guidance applied
StepHook = Callable[[int, torch.Tensor, StepOutput], None]  # (step index i, its input x_t, its output)


@torch.no_grad()
def sample_trajectory(
    velocity: Velocity,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    stochastic: Collection[int] = (),
    kind: str = "sde",
    eta: float = 0.0,
    noise: Callable[[], torch.Tensor] | None = None,
    on_step: StepHook | None = None,
    mean_at_end: bool = False,
) -> torch.Tensor:
    """Denoise `x` (float32 latents at times[0]) along the time grid `times` (1 -> 0); returns the final latents.

    stochastic:  indices of the steps that use the `kind` kernel ("sde" or "cps") with noise level `eta`;
                 the other steps are ODE steps (`kind` is not read when there are none).
    noise:       returns the standard normal noise of the next stochastic step (x's shape); called once per
                 stochastic step, in step order, so the caller's generator fixes the trajectory.
    on_step:     called after every step with (i, x_t, StepOutput) before x moves on to prev_sample.
    mean_at_end: return the last step's mean instead of its sample (images to look at: noise added to the
                 final image would only blur it).
    """
    if len(times) < 2:
        raise ValueError(f"the time grid needs at least two times, got {len(times)}")
    if stochastic and noise is None:
        raise ValueError("stochastic steps need a noise source")
    kernel = STEP_KERNELS[kind] if stochastic else ode_step  # an all-ODE trajectory needs no stochastic kernel
    times = times.to(x.device)  # an exact copy: the grid's values do not depend on where it was computed
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        v = velocity(x, t.expand(len(x)))
        out = kernel(v, x, t, t_next, eta, noise=noise()) if i in stochastic else ode_step(v, x, t, t_next)
        if on_step is not None:
            on_step(i, x, out)
        x = out.prev_sample
    return out.mean if mean_at_end else x
