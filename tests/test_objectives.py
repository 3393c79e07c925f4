"""Group-normalised advantages, the per-objective DPPO loss and its reduction to the paper's loss."""

import pytest
import torch

from mogen.losses import dppo_loss
from mogen.objectives import compute_advantages, group_normalize, multi_objective_dppo_loss, ref_kl_gate


def test_group_normalize_per_group() -> None:
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 0.0, 2.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = group_normalize(rewards, groups, std_floor=1e-6)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))


def test_group_normalize_floor_keeps_tiny_differences_small() -> None:
    adv = group_normalize(torch.tensor([0.5, 0.5001]), torch.tensor([0, 0]), std_floor=0.01)
    assert adv.abs().max() < 0.01


def test_per_objective_mode_normalizes_each_objective_then_weights() -> None:
    # objective 0 has a large scale, objective 1 a tiny one: per-objective normalization equalizes them
    rewards = torch.tensor([[0.0, 100.0, 0.0, 100.0], [0.0, 0.0, 0.1, 0.2]])
    groups = torch.tensor([0, 0, 1, 1])
    adv = compute_advantages(rewards, torch.tensor([1.0, 2.0]), groups, "per_objective", 1e-6, None)
    torch.testing.assert_close(adv.per_objective, torch.tensor([[-1.0, 1.0, -1.0, 1.0], [0.0, 0.0, -1.0, 1.0]]))
    torch.testing.assert_close(adv.combined, torch.tensor([-1.0, 1.0, -3.0, 3.0]))


def test_sum_then_normalize_lets_the_large_scale_dominate() -> None:
    rewards = torch.tensor([[0.0, 100.0], [0.2, 0.0]])
    adv = compute_advantages(rewards, torch.ones(2), torch.tensor([0, 0]), "sum_then_normalize", 1e-6, None)
    assert adv.per_objective.shape == (1, 2)
    torch.testing.assert_close(adv.combined, torch.tensor([-1.0, 1.0]))


def test_advantage_clip() -> None:
    rewards = torch.tensor([[0.0] * 9 + [1.0]])
    adv = compute_advantages(rewards, torch.ones(1), torch.zeros(10, dtype=torch.long), "per_objective", 1e-6, 2.0)
    assert adv.per_objective.max() == 2.0


def test_single_objective_reduces_exactly_to_paper_dppo() -> None:
    g = torch.Generator().manual_seed(0)
    old = torch.randn(16, 3, generator=g)
    log_prob = (old + 0.01 * torch.randn(16, 3, generator=g)).requires_grad_(True)
    kl = torch.rand(16, 3, generator=g) * 2e-5
    advantages = torch.randn(16, 1, generator=g)
    paper, paper_stats = dppo_loss(log_prob, old, kl, advantages, 1e-5)
    ours, ours_stats = multi_objective_dppo_loss(log_prob, old, kl, advantages[None], torch.ones(1), torch.tensor([1e-5]))
    assert torch.equal(paper, ours)
    assert paper_stats.masked_fraction == ours_stats[0].masked_fraction
    (g_paper,) = torch.autograd.grad(paper, log_prob)
    (g_ours,) = torch.autograd.grad(ours, log_prob)
    assert torch.equal(g_paper, g_ours)


def test_per_objective_masks_use_each_objectives_own_advantage_and_delta() -> None:
    """One sample, r > 1, kl = 1e-3: objective 0 (A > 0, delta 1e-4) is masked; objective 1 (A < 0) is
    corrective and passes; objective 2 (A > 0, delta 1e-2) is inside its own trust region and passes."""
    log_prob = torch.tensor([0.1], requires_grad=True)
    old = torch.zeros(1)
    kl = torch.tensor([1e-3])
    advantages = torch.tensor([[1.0], [-1.0], [1.0]])
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss, stats = multi_objective_dppo_loss(log_prob, old, kl, advantages, weights, torch.tensor([1e-4, 1e-4, 1e-2]))
    r = torch.exp(torch.tensor(0.1))
    torch.testing.assert_close(loss, 0.5 * r + 2.0 * -r)
    assert [s.masked_fraction.item() for s in stats] == [1.0, 0.0, 0.0]


def test_ref_kl_gate() -> None:
    assert ref_kl_gate(torch.tensor(5.0), None) == 1.0
    assert ref_kl_gate(torch.tensor(0.5), 1.0) == 1.0
    assert ref_kl_gate(torch.tensor(1.25), 1.0) == pytest.approx(0.5)
    assert ref_kl_gate(torch.tensor(2.0), 1.0) == 0.0


def test_batch_std_divides_every_group_by_one_std_of_the_whole_batch() -> None:
    # group means 1 and 5, centered +-1 in both; raw rewards 0, 2, 4, 6: batch mean 3, population variance
    # (9 + 1 + 1 + 9) / 4 = 5, so every advantage is +-1/sqrt(5) (each group's own std, 1, would give +-1)
    rewards = torch.tensor([0.0, 2.0, 4.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1])
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0]) / 5**0.5
    torch.testing.assert_close(group_normalize(rewards, groups, 1e-6, std="batch"), expected)
    torch.testing.assert_close(group_normalize(rewards, groups, 1e-6, std="group"), torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_batch_std_counts_only_valid_rewards() -> None:
    """A group whose objective does not apply (filled with 100) changes neither the batch std nor its own 0."""
    rewards = torch.tensor([[0.0, 2.0, 4.0, 6.0, 100.0, 100.0]])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    valid = torch.tensor([[True, True, True, True, False, False]])
    adv = compute_advantages(rewards, torch.ones(1), groups, "per_objective", 1e-6, None, std="batch", valid=valid)
    torch.testing.assert_close(adv.per_objective[0], torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0]) / 5**0.5)
    summed = compute_advantages(torch.cat([rewards, rewards]), torch.tensor([1.0, 0.5]), groups, "sum_then_normalize",
                                1e-6, None, std="batch", valid=torch.cat([valid, valid]))
    torch.testing.assert_close(summed.combined, 1.5 * torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0]) / (1.5 * 5**0.5))


def test_batch_std_floor_keeps_a_flat_batch_at_zero() -> None:
    adv = group_normalize(torch.full((4,), 0.7), torch.tensor([0, 0, 1, 1]), 1e-2, std="batch")
    assert torch.equal(adv, torch.zeros(4))


def test_unclipped_batch_advantages_can_exceed_the_clip_of_5() -> None:
    # 50 groups of 2; only group 0 differs (0 vs 10): batch mean 0.1, variance (99 * 0.1^2 + 9.9^2) / 100 = 0.99,
    # group 0's centered rewards are -+5, so its advantages are -+5 / sqrt(0.99) = -+5.0252 (UniRL: no clip)
    rewards = torch.zeros(1, 100)
    rewards[0, 1] = 10.0
    groups = torch.arange(100) // 2
    free = compute_advantages(rewards, torch.ones(1), groups, "per_objective", 1e-6, None, std="batch")
    torch.testing.assert_close(free.per_objective[0, :2], torch.tensor([-5.0, 5.0]) / 0.99**0.5)
    clipped = compute_advantages(rewards, torch.ones(1), groups, "per_objective", 1e-6, 5.0, std="batch")
    torch.testing.assert_close(clipped.per_objective[0, :2], torch.tensor([-5.0, 5.0]))
    assert torch.equal(free.per_objective[0, 2:], torch.zeros(98))


def test_unknown_advantage_std_is_an_error() -> None:
    with pytest.raises(ValueError, match="'group' or 'batch'"):
        group_normalize(torch.zeros(2), torch.tensor([0, 0]), 1e-2, std="global")
