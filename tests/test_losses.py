"""The exact Gaussian KL, the Flow-DPPO mask and loss, and the Flow-GRPO clipped loss."""

import itertools

import pytest
import torch

from mogen.losses import dppo_loss, dppo_mask, gaussian_kl, grpo_loss
from mogen.sampling import flow_sde_step, gaussian_log_prob


def test_kl_closed_form_matches_monte_carlo_and_log_ratio_variance() -> None:
    """For x ~ p_a: E[log p_b(x) - log p_a(x)] = -KL and Var[log p_b(x) - log p_a(x)] = 2 KL (sum reduction)."""
    g = torch.Generator().manual_seed(0)
    dims, n = 16, 400_000
    mean_a = torch.zeros(1, dims)
    mean_b = 0.3 * torch.randn(1, dims, generator=g)
    std = torch.full((1, 1), 0.8)
    kl = gaussian_kl(mean_a, mean_b, std, reduction="sum").item()
    x = mean_a + std * torch.randn(n, dims, generator=g)
    log_ratio = gaussian_log_prob(x, mean_b, std, "sum") - gaussian_log_prob(x, mean_a, std, "sum")
    assert kl == pytest.approx(((mean_a - mean_b) ** 2).sum().item() / (2 * 0.64))
    assert log_ratio.mean().item() == pytest.approx(-kl, rel=0.02)
    assert log_ratio.var().item() == pytest.approx(2 * kl, rel=0.02)
    torch.testing.assert_close(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean_a, std), torch.distributions.Normal(mean_b, std)
        ).sum(),
        torch.tensor(kl),
    )


def test_kl_is_symmetric_and_mean_reduction_is_per_dimension() -> None:
    a, b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.full((3, 1, 1, 1), 0.5)
    torch.testing.assert_close(gaussian_kl(a, b, std), gaussian_kl(b, a, std))
    torch.testing.assert_close(gaussian_kl(a, b, std, "mean") * 32, gaussian_kl(a, b, std, "sum"))
    assert gaussian_kl(a, a, std).eq(0).all()
    assert gaussian_kl(a.bfloat16(), b.bfloat16(), std.bfloat16()).dtype == torch.float32


def test_kl_takes_a_python_float_std() -> None:
    a, b = torch.zeros(2, 3), torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.6, 0.0]])
    # ||d||^2 / (2 * 0.3^2) per sample, averaged over 3 dims: [0.09, 0.36] / 0.18 / 3
    torch.testing.assert_close(gaussian_kl(a, b, 0.3), torch.tensor([0.5, 2.0]) / 3)
    torch.testing.assert_close(gaussian_kl(a, b, 0.3), gaussian_kl(a, b, torch.tensor(0.3)))


# (advantage, ratio, kl above delta) -> masked? ; the paper's Eq. 18 written out case by case.
TRUTH_TABLE = {
    (+1.0, 1.5, True): True,  # pushes the favoured action further, outside trust region
    (+1.0, 1.5, False): False,  # inside trust region
    (+1.0, 0.5, True): False,  # corrective: A > 0 but the ratio fell, moving back
    (+1.0, 0.5, False): False,
    (-1.0, 0.5, True): True,  # pushes the disfavoured action further down
    (-1.0, 0.5, False): False,
    (-1.0, 1.5, True): False,  # corrective
    (-1.0, 1.5, False): False,
    (0.0, 1.5, True): False,  # no advantage, no direction
    (0.0, 0.5, True): False,
    (+1.0, 1.0, True): False,  # ratio exactly 1 does not push
    (-1.0, 1.0, True): False,
}


@pytest.mark.parametrize(("case", "expected"), list(TRUTH_TABLE.items()))
def test_dppo_mask_truth_table(case: tuple[float, float, bool], expected: bool) -> None:
    advantage, ratio, above = case
    delta = 1e-3
    kl = torch.tensor([2e-3 if above else 5e-4])
    assert dppo_mask(torch.tensor([ratio]), kl, torch.tensor([advantage]), delta).item() is expected


def test_dppo_mask_threshold_is_strict() -> None:
    assert not dppo_mask(torch.tensor([1.5]), torch.tensor([1e-3]), torch.tensor([1.0]), 1e-3).item()


def _all_cases() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (A sign, ratio side, kl side) combination as one batch, with log-probs that carry gradient."""
    combos = list(itertools.product([1.0, -1.0, 0.0], [0.3, -0.3, 0.0], [2e-3, 5e-4]))
    advantages = torch.tensor([c[0] for c in combos])
    log_ratio = torch.tensor([c[1] for c in combos])
    kl = torch.tensor([c[2] for c in combos])
    old_log_prob = torch.randn(len(combos))
    log_prob = (old_log_prob + log_ratio).requires_grad_(True)
    return log_prob, old_log_prob, kl, advantages


def test_dppo_gradients_are_zero_exactly_where_masked() -> None:
    log_prob, old_log_prob, kl, advantages = _all_cases()
    loss, stats = dppo_loss(log_prob, old_log_prob, kl, advantages, delta=1e-3)
    loss.backward()
    ratio = torch.exp(log_prob.detach() - old_log_prob)
    masked = dppo_mask(ratio, kl, advantages, 1e-3)
    assert masked.sum() == 2  # (A>0, r>1, above) and (A<0, r<1, above)
    assert torch.all(log_prob.grad[masked] == 0)
    kept_with_signal = ~masked & (advantages != 0)
    # d/dlogp of -A r / N is -A r / N
    torch.testing.assert_close(
        log_prob.grad[kept_with_signal], (-advantages * ratio / len(ratio))[kept_with_signal]
    )
    assert torch.all(log_prob.grad[kept_with_signal] != 0)
    assert stats.masked_fraction.item() == pytest.approx(2 / len(ratio))


def test_dppo_corrective_updates_always_pass() -> None:
    """A > 0 with r < 1 (or A < 0 with r > 1) is never masked, however large the KL."""
    advantages = torch.tensor([1.0, 2.0, -1.0, -0.5])
    ratio = torch.tensor([0.1, 0.99, 1.01, 5.0])
    assert not dppo_mask(ratio, torch.full((4,), 1e9), advantages, 1e-7).any()


def test_dppo_loss_before_first_update_is_minus_mean_advantage() -> None:
    log_prob = torch.randn(6, 3)
    advantages = torch.randn(6, 1)
    loss, stats = dppo_loss(log_prob, log_prob.clone(), torch.zeros(6, 3), advantages, delta=1e-5)
    torch.testing.assert_close(loss, -advantages.expand(6, 3).mean())
    assert stats.ratio_min.item() == stats.ratio_max.item() == 1.0
    assert stats.masked_fraction.item() == 0.0 and stats.kl_mean.item() == 0.0


def test_dppo_per_sample_delta() -> None:
    """A per-sample delta (per-objective budgets) masks each sample against its own threshold."""
    ratio_log = torch.tensor([0.2, 0.2])
    kl = torch.tensor([1e-3, 1e-3])
    advantages = torch.tensor([1.0, 1.0])
    delta = torch.tensor([1e-4, 1e-2])
    _, stats = dppo_loss(ratio_log, torch.zeros(2), kl, advantages, delta)
    assert stats.masked_fraction.item() == 0.5
    assert dppo_mask(torch.exp(ratio_log), kl, advantages, delta).tolist() == [True, False]


def test_dppo_end_to_end_on_a_gaussian_step() -> None:
    """A real step: perturb the model, recompute the mean, and the loss masks exactly per Eq. 18."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    x = torch.randn(64, 4)
    with torch.no_grad():
        old = flow_sde_step(model(x), x, 0.8, 0.7, 0.7)
        model.weight.add_(0.05 * torch.randn_like(model.weight))
    new = flow_sde_step(model(x), x, 0.8, 0.7, 0.7, prev_sample=old.prev_sample)
    kl = gaussian_kl(new.mean, old.mean, old.std)
    advantages = torch.randn(64)
    delta = kl.median().item()
    loss, stats = dppo_loss(new.log_prob, old.log_prob, kl, advantages, delta)
    ratio = torch.exp(new.log_prob - old.log_prob).detach()
    expected_mask = (kl > delta) & (((advantages > 0) & (ratio > 1)) | ((advantages < 0) & (ratio < 1)))
    torch.testing.assert_close(loss, torch.where(expected_mask, 0.0, -advantages * ratio).mean())
    assert 0 < stats.masked_fraction.item() < 0.5
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("advantage", "ratio", "expected"),
    [
        (1.0, 1.5, -1.2),  # max(-1.5, -1.2): clipped at 1 + eps
        (1.0, 0.5, -0.5),  # max(-0.5, -0.8): unclipped (pessimistic)
        (-1.0, 0.5, 0.8),  # max(0.5, 0.8): clipped at 1 - eps
        (-1.0, 1.5, 1.5),  # max(1.5, 1.2): unclipped
        (2.0, 1.1, -2.2),  # inside the range
    ],
)
def test_grpo_loss_hand_computed(advantage: float, ratio: float, expected: float) -> None:
    log_prob = torch.tensor([torch.log(torch.tensor(ratio)).item()])
    loss, _ = grpo_loss(log_prob, torch.zeros(1), torch.tensor([advantage]), clip_range=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_grpo_loss_equals_ppo_clipped_objective_and_clip_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    log_prob = (0.3 * torch.randn(100, generator=g)).requires_grad_(True)
    old, adv, eps = torch.zeros(100), torch.randn(100, generator=g), 0.1
    loss, stats = grpo_loss(log_prob, old, adv, eps)
    r = torch.exp(log_prob)
    ppo = -torch.min(adv * r, adv * torch.clamp(r, 1 - eps, 1 + eps)).mean()
    torch.testing.assert_close(loss, ppo)
    clipped = ((adv > 0) & (r > 1 + eps)) | ((adv < 0) & (r < 1 - eps))
    assert stats.masked_fraction.item() == pytest.approx(clipped.float().mean().item())
    loss.backward()
    assert torch.all(log_prob.grad[clipped] == 0)
    with pytest.raises(ValueError, match="clip_range"):
        grpo_loss(log_prob, old, adv, 0.0)


def test_losses_compute_in_float32_from_bfloat16() -> None:
    log_prob = torch.randn(8).bfloat16()
    old = (log_prob.float() + 0.01).bfloat16()
    adv = torch.randn(8).bfloat16()
    loss_d, stats_d = dppo_loss(log_prob, old, torch.rand(8).bfloat16(), adv, 0.5)
    loss_g, _ = grpo_loss(log_prob, old, adv, 0.2)
    assert loss_d.dtype == loss_g.dtype == torch.float32
    assert stats_d.ratio_mean.dtype == torch.float32
    assert set(stats_d.as_dict("dppo/")) >= {"dppo/masked_fraction", "dppo/kl_mean", "dppo/ratio_mean"}
