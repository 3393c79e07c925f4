"""The policy update of DiffusionNFT and AWM (mogen.nft, mogen.awm), top to bottom in one function.

Both train on the rollout's final samples x0 (any sampler, ODE included), never on a recorded denoising step.
Once per batch every sample gets K = `sampler.train_steps` training times t_k, drawn from the step times of
`sampler.train_window` (`time_scheme`), and fresh noise eps_k; every pass reuses them (in newly shuffled
minibatches), as DPPO's passes reuse the recorded steps. Then, for each pass, minibatch and training time:

    x_t   = (1 - t) x0 + t eps                                               forward noising
    v     = v_theta(x_t, t, c)                                               the trained adapter, with grad
    nft:  v_old = v_old_adapter(x_t, t, c)                                    no grad: the lagging (EMA) adapter
          r     = clip(A, -c, c) / (2c) + 1/2
          loss  = c mean_b [ r L+(v, v_old) + (1 - r) L-(v, v_old) ] / beta_nft
    awm:  ell   = -t ((m + e)^p - e^p) / p,   m = mean_d (v - (eps - x0))^2    ('ghuber'; 'uniform', 't' too)
          a     = clip(A, -c, c) / c * a_max,   rho = exp(ell - ell_old)
          loss  = mean_b max(-a rho, -a clip(rho, 1 - eps_clip, 1 + eps_clip)) + ema_beta mean_b mean_d (v - v_ema)^2
    loss += beta mean_b mean_d (v - v_base)^2                                 if algorithm.beta > 0 (LoRA disabled)

The gradient of the per-time losses (averaged over the K times) is accumulated, clipped and applied once per
minibatch, with mogen.update's helpers, so gradient accumulation, clipping and the data-parallel loss scale are
DPPO's. After the update the trainer moves the old adapter: old <- d old + (1 - d) trained, d = min(ramp s, max).

One advantage per sample: A = sum_k w_k g_k A_k, the objectives' weights times their ref-KL gates (1 without a
`max_ref_kl`) applied to the per-objective advantages; it is what DPPO's per-objective loss
sum_k w_k g_k mean(-A_k r) weights when no mask fires. In `sum_then_normalize` mode it is the one advantage.

AWM's ell_old is the sampling policy's ell at the same (x0, eps, t). The first minibatch of the first pass runs
with the sampling policy's parameters, so there ell_old = sg(ell) (ratio 1). The other minibatches of the first
pass get it from one no-grad forward per training time before the first optimizer step, as train_sd3_awm.py
computes "old log probs" for its later accumulation batches; later passes reuse what the first pass stored. With
one minibatch no extra forward is needed.

Cost per sample and step (K = train_steps): K forwards with grad, plus K no-grad forwards of the old adapter
(nft) or of the EMA adapter (awm, ema_beta > 0), K base forwards if beta > 0, and for awm with M minibatches
K (M - 1) / M ell_old forwards. The rollout costs what DPPO's does (nft samples it with the old adapter).

Data parallel: training times and noise are drawn for the global batch and sliced, so a sample gets the same
ones however the batch is split over processes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from mogen.awm import awm_loss, matching_log_likelihood
from mogen.config import AlgorithmConfig, SamplerConfig
from mogen.forward_process import flow_matching_target, forward_noising, sample_training_times, velocity_penalty
from mogen.models.contract import FlowPolicy, index_cond
from mogen.nft import nft_loss, optimality_probability
from mogen.rollout import Rollout
from mogen.sampling import timesteps
from mogen.update import UpdateInputs, UpdateStats, clipped_step, gradient_sync, kl_to_rollout_policy, local_minibatch, minibatch_sizes

ModelContext = Callable[[], AbstractContextManager]  # under it, the policy acts as another adapter (or the base)


@dataclass
class TrainingPoints:
    """Where this process's samples are re-noised: times t (K, B) and noise eps (K, B, *latent), float32."""

    t: torch.Tensor
    noise: torch.Tensor

    def noised(self, x0: torch.Tensor, k: int, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, eps, t) of the given samples at training time k; x0 holds those samples' clean latents."""
        eps, t = self.noise[k, samples], self.t[k, samples]
        return forward_noising(x0, eps, t), eps, t


def draw_training_points(
    sampler: SamplerConfig, algorithm: AlgorithmConfig, global_size: int, shard: slice, latent_shape: tuple[int, ...],
    cpu: torch.Generator, device_generator: torch.Generator, device: torch.device,
) -> TrainingPoints:
    """K = sampler.train_steps times per sample from the step times of sampler.train_window (the sampler's own
    grid), times on the CPU generator, noise on the device generator (the step's generators: the seed contract)."""
    start, end = sampler.train_window
    if algorithm.name == "awm" and not algorithm.awm.include_init:
        start = max(start, 1)  # step 0 is t = 1, where x_t is pure noise
    scheme = algorithm.nft.time_scheme if algorithm.name == "nft" else algorithm.awm.time_scheme
    grid = timesteps(sampler.num_steps, sampler.shift, device=device)[start : end + 1]  # its N step times + the next
    t = sample_training_times(scheme, sampler.train_steps, global_size, grid=grid, generator=cpu)
    noise = [
        torch.randn((global_size, *latent_shape), generator=device_generator, device=device)[shard]
        for _ in range(sampler.train_steps)
    ]
    return TrainingPoints(t=t[:, shard], noise=torch.stack(noise))


def forward_update(
    policy: FlowPolicy,
    trainable: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    rollout: Rollout,
    inputs: UpdateInputs,
    points: TrainingPoints,
    algorithm: AlgorithmConfig,
    grad_clip: float | None,
    generator: torch.Generator,
    old_model: ModelContext | None,
    base_model: ModelContext,
    kind: str,
    eta: float,
    measure_kl_after: bool,
) -> dict[str, float]:
    """Run `updates_per_batch` passes of minibatch gradient steps of nft or awm (see the module docstring).

    old_model:         context under which the policy is the old adapter: nft's old policy, awm's EMA (None for
                       awm with ema_beta 0, which has none).
    base_model:        context under which the policy is the base model (used when algorithm.beta > 0).
    measure_kl_after:  also measure `kl_after`, the exact KL between the sampling policy and the updated one on the
                       rollout's stochastic steps of kernel `kind` with `eta` (SDE/CPS rollouts only).
    """
    nft, awm = algorithm.nft, algorithm.awm
    num_times = points.t.shape[0]
    processes = accelerator.num_processes
    device = rollout.final_latents.device
    kept = torch.nonzero(inputs.keep[inputs.shard].cpu()).flatten()
    global_sizes = minibatch_sizes(inputs.keep, processes, algorithm.minibatches)
    advantage = (inputs.weights[:, None] * inputs.advantages.per_objective).sum(0)  # (B,) one per sample
    r = optimality_probability(advantage, nft.advantage_clip)  # nft
    old_ell = torch.full((num_times, len(rollout)), float("nan"), device=device)  # awm: the sampling policy's ell
    stats_log = UpdateStats()
    optimizer_steps = 0

    for pass_index in range(algorithm.updates_per_batch):
        order = kept[torch.randperm(len(kept), generator=generator)]
        minibatches = list(zip(order.tensor_split(algorithm.minibatches), global_sizes))
        if algorithm.name == "awm" and pass_index == 0:  # before the first optimizer step: the sampling policy
            _record_sampling_ell(policy, accelerator, rollout, points, minibatches[1:], algorithm, old_ell)
        for minibatch, global_size in minibatches:
            if global_size == 0:  # empty on every process: all of them skip it
                continue
            minibatch, scale, weight = local_minibatch(minibatch, global_size, processes, device)
            cond = index_cond(rollout.cond, minibatch)
            x0 = rollout.final_latents[minibatch]
            optimizer.zero_grad(set_to_none=True)
            for k in range(num_times):
                x_t, eps, t = points.noised(x0, k, minibatch)
                with gradient_sync(accelerator, policy.transformer, last=k == num_times - 1):
                    with torch.no_grad(), accelerator.autocast():  # the frozen policies first, then the trained one
                        v_old = None
                        if old_model is not None:
                            with old_model():
                                v_old = policy.velocity(x_t, t, cond)
                        v_base = None
                        if algorithm.beta > 0:
                            with base_model():
                                v_base = policy.velocity(x_t, t, cond)
                    with accelerator.autocast():
                        velocity = policy.velocity(x_t, t, cond)
                    if algorithm.name == "nft":
                        loss, nft_stats = nft_loss(
                            velocity, v_old, x0, eps, t, r[minibatch], beta=nft.beta, loss_scale=nft.advantage_clip,
                            adaptive_weighting=nft.adaptive_weighting, ref_velocity=v_base, ref_beta=algorithm.beta,
                        )
                        for name, value in vars(nft_stats).items():
                            stats_log.add(name, value, weight)
                    else:
                        sampling = optimizer_steps == 0 or weight == 0  # the sampling policy itself, or a stand-in
                        loss, awm_stats = awm_loss(
                            velocity, x0, eps, t, advantage[minibatch],
                            old_log_likelihood=None if sampling else old_ell[k, minibatch],
                            clip_range=awm.clip_range, advantage_clip=awm.advantage_clip,
                            advantage_max=awm.advantage_max, weighting=awm.weighting, ghuber_power=awm.ghuber_power,
                            ref_velocity=v_base, ref_beta=algorithm.beta,
                        )
                        if optimizer_steps == 0 and weight > 0:  # later passes read it
                            old_ell[k, minibatch] = matching_log_likelihood(
                                velocity.detach(), flow_matching_target(x0, eps), t, awm.weighting, awm.ghuber_power
                            )
                        if v_old is not None:
                            ema_penalty = velocity_penalty(velocity, v_old).mean()
                            loss = loss + awm.ema_beta * ema_penalty
                            stats_log.add("ema_penalty", ema_penalty.detach(), weight)
                        for name, value in vars(awm_stats).items():
                            stats_log.add(name, value, weight)
                    stats_log.add("loss", loss.detach(), weight)
                    accelerator.backward(loss * scale / num_times)
            clipped_step(accelerator, trainable, optimizer, grad_clip, stats_log)
            optimizer_steps += 1

    summary = stats_log.summary(accelerator)
    if algorithm.beta == 0:
        summary.pop("ref_penalty", None)  # a logged 0 would read as "at the base model"
    if measure_kl_after:
        summary["kl_after"] = float(kl_to_rollout_policy(policy, accelerator, rollout, kept, kind, eta))
    return summary


@torch.no_grad()
def _record_sampling_ell(
    policy: FlowPolicy, accelerator: Accelerator, rollout: Rollout, points: TrainingPoints,
    minibatches: list[tuple[torch.Tensor, int]], algorithm: AlgorithmConfig, old_ell: torch.Tensor,
) -> None:
    """AWM: the sampling policy's ell of these minibatches' samples at every training time, into old_ell (K, B).
    Every process runs the same forwards (a stand-in sample where it has none), as the update does."""
    awm, device = algorithm.awm, rollout.final_latents.device
    for minibatch, global_size in minibatches:
        if global_size == 0:
            continue
        samples, _, weight = local_minibatch(minibatch, global_size, accelerator.num_processes, device)
        cond, x0 = index_cond(rollout.cond, samples), rollout.final_latents[samples]
        for k in range(points.t.shape[0]):
            x_t, eps, t = points.noised(x0, k, samples)
            with accelerator.autocast():
                velocity = policy.velocity(x_t, t, cond)
            if weight > 0:
                old_ell[k, samples] = matching_log_likelihood(
                    velocity, flow_matching_target(x0, eps), t, awm.weighting, awm.ghuber_power
                )
