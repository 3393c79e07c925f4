"""Forgetting probes: what a model does on prompts and objectives alignment never trains on.

Every probe samples from fixed seeds (noise drawn on the CPU, so the same seed gives the same noise on any
device and for any batch size) and returns per-unit values (one per sample, or one per prompt for diversity)
so that the report can put a bootstrap confidence interval on the aligned-minus-base difference.

Probe kinds:
  scores         reward_zoo scorers on ODE samples (the toy verifier per attribute, OCR, compressibility, ...)
  kl             exact mean per-step KL between the policy and the base model (LoRA adapter disabled) along the
                 policy's own Flow-SDE trajectories: KL_step = ||mean_policy - mean_base||^2 / (2 std^2),
                 averaged over latent dimensions and steps (the same formula as the trainer's kl/ref)
  diversity      mean pairwise RMS pixel distance between the images of one prompt (0 = mode collapse)
  flow_matching  E ||v(x_t, t) - (eps - x0)||^2 on toy-world renders of held-out prompts, fixed t grid and noise
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

import reward_zoo
from mogen.evaluation.suite import Probe, ProbeSampler, Suite, probe_prompts
from mogen.lora import adapter_disabled
from mogen.losses import gaussian_kl
from mogen.models.contract import FlowPolicy
from mogen.sampling import StepOutput, flow_sde_step, timesteps
from mogen.toyworld import render_batch, scene_from_prompt
from mogen.trajectory import Velocity, sample_trajectory
from reward_zoo.registry import scorer_class

ContextFactory = Callable[[], AbstractContextManager]


@dataclass
class MetricValues:
    """One metric's per-unit values (float64, NaN where a unit was not scored) and the prompt of each unit."""

    values: np.ndarray
    groups: np.ndarray
    higher_is_better: bool | None  # None: a distance with no "better" direction (KL to base)

    def mean(self) -> float:
        """Mean over prompts of the per-prompt mean (each prompt weighs the same), NaN if nothing scored."""
        return float(np.mean(per_group_means(self.values, self.groups))) if np.isfinite(self.values).any() else math.nan


@dataclass
class SuiteResult:
    metrics: dict[str, MetricValues] = field(default_factory=dict)
    grids: dict[str, tuple[list[str], torch.Tensor]] = field(default_factory=dict)  # probe -> (prompts, images)
    notes: list[str] = field(default_factory=list)  # skipped probes and scorers, and why

    def means(self) -> dict[str, float]:
        return {key: m.mean() for key, m in self.metrics.items()}


def per_group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each group that has any, in group order."""
    finite = np.isfinite(values)
    return np.array([values[(groups == g) & finite].mean() for g in np.unique(groups[finite])])


def has_adapter(policy: FlowPolicy) -> bool:
    return bool(getattr(_unwrap(policy.transformer), "_hf_peft_config_loaded", False))


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (accelerate.prepare), or the module itself."""
    return getattr(module, "module", module)


def _parts(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _device(policy: FlowPolicy) -> torch.device:
    return next(policy.transformer.parameters()).device


def _trajectory_start(policy: FlowPolicy, prompts: list[str], sampler: ProbeSampler):
    """What every sampled probe starts from: the seeded CPU generator, the initial noise (drawn on the CPU so the
    same seed gives the same images on any device), batch slices, their conditioning and the time grid."""
    device = _device(policy)
    generator = torch.Generator().manual_seed(sampler.seed)
    x = torch.randn((len(prompts), *policy.latent_shape), generator=generator).to(device)
    parts = _parts(len(prompts), sampler.batch_size)
    conds = [policy.encode_prompts(prompts[p]) for p in parts]
    return device, generator, x, parts, conds, timesteps(sampler.num_steps, sampler.shift, device=device)


def _batched_velocity(policy: FlowPolicy, parts: list[slice], conds: list) -> Velocity:
    """v(x, t) of the whole batch, one forward per `sampler.batch_size` slice (what bounds a probe's memory)."""
    return lambda x, t: torch.cat([policy.velocity(x[p], t[p], cond) for p, cond in zip(parts, conds)])


@torch.no_grad()
def sample_images(policy: FlowPolicy, prompts: list[str], sampler: ProbeSampler) -> torch.Tensor:
    """Deterministic ODE samples (B, 3, H, W) in [0, 1] (videos: (B, F, 3, H, W)), one per entry of `prompts`."""
    _, _, x, parts, conds, times = _trajectory_start(policy, prompts, sampler)
    x = sample_trajectory(_batched_velocity(policy, parts, conds), x, times)
    return torch.cat([policy.decode(x[p]).float().clamp(0, 1) for p in parts])


@torch.no_grad()
def kl_to_reference(policy: FlowPolicy, prompts: list[str], sampler: ProbeSampler, reference: ContextFactory) -> torch.Tensor:
    """Mean per-step KL(policy || reference) per sample (B,), along the policy's own Flow-SDE trajectories.

    At each step both models see the same x_t; the step's std depends only on (t, t_next, eta), so the KL is
    exact: ||mean - mean_ref||^2 / (2 std^2), averaged over latent dimensions, then over the steps.
    """
    device, generator, x, parts, conds, times = _trajectory_start(policy, prompts, sampler)
    total = torch.zeros(len(prompts), device=device, dtype=torch.float32)

    def add_kl(i: int, x_t: torch.Tensor, out: StepOutput) -> None:
        t, t_next = times[i], times[i + 1]
        for p, cond in zip(parts, conds):
            with reference():
                ref_velocity = policy.velocity(x_t[p], t.expand(len(x_t[p])), cond)
            ref_mean = flow_sde_step(ref_velocity, x_t[p], t, t_next, sampler.eta, prev_sample=out.prev_sample[p]).mean
            total[p] += gaussian_kl(out.mean[p], ref_mean, out.std[p])

    sample_trajectory(
        _batched_velocity(policy, parts, conds), x, times, stochastic=range(sampler.num_steps), kind="sde", eta=sampler.eta,
        noise=lambda: torch.randn(x.shape, generator=generator).to(device), on_step=add_kl,
    )
    return total / sampler.num_steps


@torch.no_grad()
def flow_matching_loss(
    policy: FlowPolicy, prompts: list[str], sampler: ProbeSampler, t_grid: list[float], encode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Per-sample mean over `t_grid` of mean_dims (v(x_t, t) - (eps - x0))^2 on toy-world renders of `prompts`.

    x0 = encode(rendered image), x_t = (1 - t) x0 + t eps; the scenes' layouts and eps come from `sampler.seed`.
    """
    device = _device(policy)
    size = policy.decode(torch.zeros((1, *policy.latent_shape), device=device)).shape[-1]
    rng = np.random.default_rng(sampler.seed)
    images = render_batch([scene_from_prompt(p, rng, size) for p in prompts], device)
    generator = torch.Generator().manual_seed(sampler.seed)
    eps = torch.randn((len(t_grid), len(prompts), *policy.latent_shape), generator=generator).to(device)
    loss = torch.zeros(len(prompts), device=device, dtype=torch.float32)
    for p in _parts(len(prompts), sampler.batch_size):
        x0 = encode(images[p]).float()
        cond = policy.encode_prompts(prompts[p])
        for i, t in enumerate(t_grid):
            x_t = (1 - t) * x0 + t * eps[i, p]
            v = policy.velocity(x_t, torch.full((len(x0),), t, device=device), cond).float()
            loss[p] += ((v - (eps[i, p] - x0)) ** 2).flatten(1).mean(1)
    return loss / len(t_grid)


def pairwise_distance(images: torch.Tensor) -> float:
    """Mean over pairs of the RMS pixel difference between images (N, 3, H, W): 0 iff all are identical."""
    flat = images.flatten(1).float()
    return float((torch.pdist(flat) / math.sqrt(flat.shape[1])).mean())


_SCORERS: dict[tuple[str, str, str], reward_zoo.Scorer] = {}


def _scorer(name: str, kwargs: dict, device: torch.device) -> reward_zoo.Scorer | str:
    """A scorer loaded once per process, or the reason it cannot run here (missing weights)."""
    key = (name, json.dumps(kwargs, sort_keys=True), str(device))
    if key not in _SCORERS:
        present, where = scorer_class(name)[0].weights_status(**kwargs)
        if not present:
            return f"weights not found ({where})"
        try:
            _SCORERS[key] = reward_zoo.get(name, device=device, **kwargs)
        except reward_zoo.MissingWeightsError as err:
            return str(err).splitlines()[0]
    return _SCORERS[key]


def metric_directions(suite: Suite) -> dict[str, bool | None]:
    """metric -> True if higher is better, False if lower is, None for the KL distance (no better direction)."""
    directions: dict[str, bool | None] = {}
    for probe in suite.probes:
        if probe.kind == "scores":
            directions.update({k: scorer_class(s.name)[0].higher_is_better for k, s in zip(probe.metric_keys(), probe.scorers)})
        else:
            directions[probe.metric_keys()[0]] = {"kl": None, "diversity": True, "flow_matching": False}[probe.kind]
    return directions


def _probe_units(probe: Probe) -> tuple[list[str], list[str], np.ndarray]:
    """(prompts, prompts repeated images_per_prompt times, the prompt index of each sample)."""
    prompts = probe_prompts(probe.prompts)
    n = probe.sampler.images_per_prompt
    return prompts, [p for p in prompts for _ in range(n)], np.repeat(np.arange(len(prompts)), n)


def run_suite(policy: FlowPolicy, suite: Suite, as_base: bool = False, with_grids: bool = True) -> SuiteResult:
    """Run every probe of `suite` on `policy` (as the base model, adapter disabled, if `as_base`).

    The KL probe's reference is the base model: the adapter disabled, or the policy itself when it is the base
    (then the KL is exactly 0). ODE samples are shared between probes with the same prompts and sampler.
    """
    transformer = _unwrap(policy.transformer)
    adapted = has_adapter(policy)
    model_context = (lambda: adapter_disabled(transformer)) if as_base and adapted else nullcontext
    reference: ContextFactory = (lambda: adapter_disabled(transformer)) if adapted and not as_base else nullcontext
    was_training = policy.transformer.training
    policy.transformer.eval()
    result, samples = SuiteResult(), {}
    try:
        with model_context():
            for probe in suite.probes:
                _run_probe(policy, probe, suite, reference, result, samples, with_grids)
    finally:
        policy.transformer.train(was_training)
    return result


def _run_probe(policy, probe: Probe, suite: Suite, reference: ContextFactory, result: SuiteResult, samples: dict, with_grids: bool) -> None:
    prompts, repeated, groups = _probe_units(probe)
    key = probe.metric_keys()[0]
    if probe.kind == "kl":
        values = kl_to_reference(policy, repeated, probe.sampler, reference)
        result.metrics[key] = MetricValues(values.double().cpu().numpy(), groups, None)
        return
    if probe.kind == "flow_matching":
        encode = getattr(policy, "encode_images", None)
        if encode is None:
            result.notes.append(f"{probe.name}: skipped, the model adapter has no encode_images(images) -> latents")
            return
        values = flow_matching_loss(policy, repeated, probe.sampler, probe.t_grid, encode)
        result.metrics[key] = MetricValues(values.double().cpu().numpy(), groups, False)
        return
    cache_key = (tuple(repeated), probe.sampler.model_dump_json(exclude={"eta", "batch_size"}))
    if cache_key not in samples:
        samples[cache_key] = sample_images(policy, repeated, probe.sampler)
    images = samples[cache_key]
    if with_grids and suite.grid_prompts:  # prompts evenly spread over the probe's list, all their images
        shown = np.unique(np.linspace(0, len(prompts) - 1, min(suite.grid_prompts, len(prompts))).round().astype(int))
        rows = torch.as_tensor(np.isin(groups, shown), device=images.device)
        result.grids[probe.name] = ([prompts[i] for i in shown], images[rows].cpu())
    if probe.kind == "diversity":
        n = probe.sampler.images_per_prompt
        values = np.array([pairwise_distance(images[i * n : (i + 1) * n]) for i in range(len(prompts))])
        result.metrics[key] = MetricValues(values, np.arange(len(prompts)), True)
        return
    for metric, spec in zip(probe.metric_keys(), probe.scorers):
        scorer = _scorer(spec.name, spec.kwargs, images.device)
        if isinstance(scorer, str):
            result.notes.append(f"{metric}: skipped, scorer '{spec.name}' cannot run here: {scorer}")
            continue
        try:
            # videos (B, F, 3, H, W): the image scorer on 4 evenly spaced frames, averaged per video
            scored = reward_zoo.score_video(scorer, images, repeated) if images.ndim == 5 else scorer(images, repeated)
        except reward_zoo.ScorerError as err:  # failed on every sample: report it, keep the other probes
            result.notes.append(f"{metric}: skipped, {err}")
            continue
        scores = scored.scores  # NaN where the scorer failed on a sample
        if "applicable" in scored.details:  # the toy verifier: an attribute the prompt does not have is not a 0
            scores = torch.where(scored.details["applicable"] > 0, scores, torch.full_like(scores, math.nan))
        result.metrics[metric] = MetricValues(scores.double().cpu().numpy(), groups, scorer.higher_is_better)


def run_probes(policy: FlowPolicy, suite: Suite) -> dict[str, float]:
    """What the trainer logs every `eval.every` steps: `probe/<probe>/<metric>` means, no image grids.

    Skipped probes are reported as warnings (Python shows each distinct one once); metrics with no scored
    sample (NaN) are left out, so metrics.jsonl stays strict JSON.
    """
    result = run_suite(policy, suite, with_grids=False)
    for note in result.notes:
        warnings.warn(f"eval suite '{suite.name}': {note}")
    return {f"probe/{key}": value for key, value in result.means().items() if math.isfinite(value)}
