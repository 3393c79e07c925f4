"""The recipe's reward mixture: scorers from reward_zoo, their weights and budgets, and batch scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import reward_zoo
from mogen.config import ConfigError, RewardConfig


@dataclass
class Scores:
    """Raw scores of K objectives for B samples. `raw` is (K, B) float32, NaN where a scorer failed or the
    objective does not apply to the sample's prompt (its group then gets advantage 0 for that objective)."""

    keys: list[str]
    raw: torch.Tensor
    failed: torch.Tensor  # (B,) bool: any objective failed on the sample

    def failed_groups(self, group_ids: torch.Tensor) -> torch.Tensor:
        """(B,) True for every sample whose prompt group holds a failed sample: its advantages are meaningless."""
        bad_groups = torch.unique(group_ids[self.failed])
        return torch.isin(group_ids, bad_groups)

    def filled(self) -> torch.Tensor:
        """Raw scores with NaN set to 0: failed groups are dropped anyway, not-applicable groups get advantage 0."""
        return torch.nan_to_num(self.raw, nan=0.0)

    def summary(self, weights: torch.Tensor) -> dict[str, float]:
        """reward/<key>: mean raw score over the samples it applies to; reward/total: weighted sum of those means."""
        means = torch.stack([row[~torch.isnan(row)].mean() if (~torch.isnan(row)).any() else row.new_tensor(float("nan")) for row in self.raw])
        out = {f"reward/{k}": float(m) for k, m in zip(self.keys, means)}
        out["reward/total"] = float((weights.to(means.device) * means).sum())
        out["reward/failed_fraction"] = float(self.failed.float().mean())
        return out


@dataclass
class Objectives:
    keys: list[str]
    scorers: list[reward_zoo.Scorer]
    weights: torch.Tensor  # (K,)
    kl_budgets: list[float | None]
    max_ref_kls: list[float | None]
    frames: list[int | list[int]]  # video models: which frames each scorer sees, and how their scores reduce
    frame_reduces: list[str]

    @classmethod
    def build(cls, cfgs: list[RewardConfig], device: torch.device) -> Objectives:
        """Load every scorer once; a bad name, argument or missing weight file is a ConfigError naming the entry."""
        scorers = []
        for i, cfg in enumerate(cfgs):
            try:
                scorers.append(reward_zoo.get(cfg.name, device=device, **cfg.kwargs))
            except (reward_zoo.ScorerConfigError, reward_zoo.MissingWeightsError) as err:
                raise ConfigError(f"rewards.{i} ({cfg.name}): {err}") from None
        return cls(
            keys=[c.key for c in cfgs],
            scorers=scorers,
            weights=torch.tensor([c.weight for c in cfgs], dtype=torch.float32),
            kl_budgets=[c.kl_budget for c in cfgs],
            max_ref_kls=[c.max_ref_kl for c in cfgs],
            frames=[c.frames for c in cfgs],
            frame_reduces=[c.frame_reduce for c in cfgs],
        )

    def deltas(self, default: float, mode: str) -> torch.Tensor:
        """Per-objective DPPO thresholds; a single one (the algorithm's) when advantages are summed first."""
        if mode == "sum_then_normalize":
            return torch.tensor([default])
        return torch.tensor([default if b is None else b for b in self.kl_budgets])

    def loss_keys(self, mode: str) -> list[str]:
        return ["total"] if mode == "sum_then_normalize" else list(self.keys)

    def score(self, images: torch.Tensor, prompts: list[str]) -> Scores:
        """Score every objective; scores of lower-is-better scorers are negated so that higher is better.

        `images` is (B, 3, H, W), or (B, F, 3, H, W) videos: then each scorer sees its reward's `frames`, reduced
        by its `frame_reduce` (reward_zoo.score_video)."""
        rows, failed = [], torch.zeros(len(prompts), dtype=torch.bool, device=images.device)
        for i, scorer in enumerate(self.scorers):
            if images.ndim == 5:
                result = reward_zoo.score_video(scorer, images, prompts, self.frames[i], self.frame_reduces[i])
            else:
                result = scorer(images, prompts)
            sign = 1.0 if scorer.higher_is_better else -1.0
            scores = sign * result.scores.to(images.device)
            if "applicable" in result.details:  # e.g. a position score on a count prompt: no score, not a failure
                scores = torch.where(result.details["applicable"].to(images.device) > 0, scores, float("nan"))
            rows.append(scores)
            failed |= result.failed.to(images.device)
        return Scores(self.keys, torch.stack(rows), failed)
