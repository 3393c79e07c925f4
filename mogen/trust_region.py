"""Where a ratio clip binds, in the KL units of Flow-DPPO's delta: one definition for `mogen calibrate` and the
benchmarks.

A Flow-SDE/CPS step is a Gaussian policy, and the one-sample log-ratio averaged over the D latent elements of a
sample (flow_grpo's and mogen's reduction) is, over the sampling noise,

    log r ~ N(-KL, 2 KL / D),      KL = mean_i (mean_new,i - mean_old,i)^2 / (2 std^2)   (the exact per-step KL)

A clip range eps clips a step when |log r| > eps. It "binds" at the KL where half of the steps are clipped;
roughly KL ~ min(eps, D eps^2 / 2): the mean or the spread of log r reaches eps. So the same eps is a different
constraint at another latent size, while delta (a KL averaged over elements) is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

# flow_grpo's published clip range on SD3.5 at 512 px (16 x 64 x 64 latents): config/base.py train.clip_range
REFERENCE_CLIP_RANGE, REFERENCE_D = 1e-4, 16 * 64 * 64
# UniRL's tau = 1e-5 on bf16-stored means (examples/diffusion/sd3_flowdppo.yaml) is an exact float32 KL of
# ~7.5e-6 / 4.8e-6 / 2.6e-6 at SD3.5 steps 1 / 2 / 4: 5e-6 in the middle of its trained window.
REFERENCE_DELTA = 5e-6


def clip_fraction(kl: float, eps: float, d: int) -> float:
    """P(|log r| > eps) for log r ~ N(-kl, 2 kl / d): the share of steps a clip eps clips at a per-step KL kl."""
    spread = math.sqrt(2 * kl / d)
    normal = NormalDist()
    return 1 - normal.cdf((eps - kl) / spread) + normal.cdf((-eps - kl) / spread)


def _bisect(increasing: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with increasing(x) = target, by bisection in log space."""
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if increasing(mid) > target else (mid, hi)
    return math.sqrt(lo * hi)


def binding_kl(eps: float, d: int) -> float:
    """The per-step KL at which a clip eps clips half of the steps of a D-element latent."""
    return _bisect(lambda kl: clip_fraction(kl, eps, d), 0.5, 1e-14, 1.0)


def matched_eps(eps_reference: float, d_reference: int, d: int) -> float:
    """The clip range that binds on a D-element latent at the KL where eps_reference binds on d_reference."""
    target = binding_kl(eps_reference, d_reference)
    return _bisect(lambda eps: binding_kl(eps, d), target, 1e-8, 1.0)
