"""The model contract: what the trainer, the samplers and the probes need from a model adapter (tiny, sd3, flux).

It lives with the adapters, not with its users: an adapter imports this module and nothing of the trainer's.
mogen/models/README.md says how to write one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch

Conditioning = Any  # a dict or a dataclass of batch-first tensors, whatever the adapter's velocity takes


class FlowPolicy(Protocol):
    """A flow-matching text-to-image model as the trainer sees it.

    transformer:    the diffusers transformer that LoRA is attached to (the only module that trains).
    latent_shape:   (C, H, W) of one sample's latents (the noise the sampler starts from).
    encode_prompts: conditioning for a list of prompts, a dict or dataclass of batch-first tensors (under no_grad; text
                    encoders are frozen). Adapters with classifier-free guidance include the negative prompt's
                    embeddings in it.
    velocity:       v(x_t, t) with t in [0, 1] as a (B,) tensor, guidance applied; differentiable w.r.t. the
                    transformer's trainable parameters.
    decode:         latents -> images (B, 3, H, W) in [0, 1].
    """

    transformer: torch.nn.Module
    latent_shape: tuple[int, ...]

    def encode_prompts(self, prompts: list[str]) -> Conditioning: ...

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def index_cond(cond: Conditioning, index: torch.Tensor | slice) -> Conditioning:
    """The conditioning of a subset of samples (every tensor of the dict or dataclass indexed on dim 0)."""
    if isinstance(cond, dict):
        return {key: value[index] for key, value in cond.items()}
    return dataclasses.replace(cond, **{f.name: getattr(cond, f.name)[index] for f in dataclasses.fields(cond)})
