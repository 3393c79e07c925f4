"""The built-in tiny text-to-image flow model: a real SD3 transformer on a tiny autoencoder's latents.

Same parts, same loading path as SD3.5, only small:
    tokenizer/     transformers CLIPTokenizer (built offline from open_clip's BPE file)
    text_encoder/  transformers CLIPTextModel, trained from scratch jointly with the transformer
    transformer/   diffusers SD3Transformer2DModel (joint text-image attention, patch 1 on 8x8 latents)
    vae/           diffusers AutoencoderKL (32x32 RGB <-> 4x8x8 latents), trained first, then frozen
    model_index.json  which class is in which folder, plus the image size and sampling shift

Conventions (as in mogen.sampling): flow time t in [0, 1], t = 1 noise; x_t = (1 - t) x0 + t eps;
the transformer predicts the velocity v ~ eps - x0. Latents are normalized as SD3 does:
z = (vae_latent - shift_factor) * scaling_factor, so they have roughly zero mean and unit variance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from mogen.models.tokenizer import build_clip_tokenizer
from mogen.sampling import timesteps
from mogen.trajectory import sample_trajectory

BUILTIN_TINY = "builtin:tiny"
MODEL_INDEX = "model_index.json"
SUBFOLDERS = ("transformer", "text_encoder", "tokenizer", "vae")
# The transformer's attention projections: where LoRA goes (image stream and text stream of each joint block).
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def builtin_tiny_path() -> Path:
    """The folder of the pretrained tiny model shipped inside the mogen package."""
    return Path(str(resources.files("mogen") / "assets" / "tiny"))


@dataclass
class TinyConfig:
    """Sizes of a freshly initialised tiny model (what `scripts/pretrain_tiny.py` trains)."""

    image_size: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)  # one entry per resolution; the last two halve the size
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    num_merges: int = 4096
    max_length: int = 16
    num_layers: int = 6
    num_heads: int = 3
    head_dim: int = 32
    sample_shift: float = 1.0


@dataclass
class TextConditioning:
    """What the transformer is conditioned on: per-token embeddings and a pooled (end-token) embedding."""

    prompt_embeds: torch.Tensor  # (B, L, D_text)
    pooled_prompt_embeds: torch.Tensor  # (B, D_text)


class TinyT2I(torch.nn.Module):
    """Adapter around the tiny model's parts with the interface the trainer and samplers use."""

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        vae: AutoencoderKL,
        image_size: int,
        sample_shift: float = 1.0,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.image_size = image_size
        self.sample_shift = sample_shift

    # ------------------------------------------------------------------ construction and files

    @classmethod
    def from_config(cls, config: TinyConfig, tokenizer_dir: str | Path) -> TinyT2I:
        """A randomly initialised model; the tokenizer is built offline into `tokenizer_dir`."""
        tokenizer = build_clip_tokenizer(tokenizer_dir, config.num_merges, config.max_length)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.text_hidden,
                intermediate_size=4 * config.text_hidden,
                num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        n_down = len(config.vae_channels) - 1
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
            block_out_channels=config.vae_channels,
            layers_per_block=1,
            latent_channels=config.latent_channels,
            norm_num_groups=8,
            sample_size=config.image_size,
            mid_block_add_attention=False,
            scaling_factor=1.0,  # set from data after the autoencoder is trained
            shift_factor=0.0,
        )
        latent_size = config.image_size // 2**n_down
        transformer = SD3Transformer2DModel(
            sample_size=latent_size,
            patch_size=1,
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            num_layers=config.num_layers,
            attention_head_dim=config.head_dim,
            num_attention_heads=config.num_heads,
            joint_attention_dim=config.text_hidden,
            caption_projection_dim=config.num_heads * config.head_dim,
            pooled_projection_dim=config.text_hidden,
            pos_embed_max_size=latent_size,
            qk_norm="rms_norm",
        )
        return cls(transformer, text_encoder, tokenizer, vae, config.image_size, config.sample_shift)

    @classmethod
    def from_pretrained(
        cls, path: str | Path = BUILTIN_TINY, device: torch.device | str | None = None, torch_dtype: torch.dtype | None = None
    ) -> TinyT2I:
        """Load a tiny-model folder (or the shipped one with "builtin:tiny") through the libraries' own loaders."""
        folder = builtin_tiny_path() if str(path) == BUILTIN_TINY else Path(path)
        index_file = folder / MODEL_INDEX
        if not index_file.is_file():
            hint = " (the package data is missing: reinstall mogen)" if str(path) == BUILTIN_TINY else ""
            raise FileNotFoundError(
                f"{index_file} not found: a tiny-model folder needs {MODEL_INDEX} and the subfolders "
                f"{', '.join(SUBFOLDERS)} (write one with TinyT2I.save_pretrained){hint}"
            )
        try:
            index = json.loads(index_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_file}: not valid JSON ({err})") from None
        missing = [name for name in SUBFOLDERS if not (folder / name).is_dir()]
        if index.get("_class_name") != cls.__name__ or missing:
            raise ValueError(
                f"{folder} is not a {cls.__name__} folder: _class_name={index.get('_class_name')!r}, missing subfolders {missing}"
            )
        dtype_kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        model = cls(
            transformer=SD3Transformer2DModel.from_pretrained(folder / "transformer", **dtype_kwargs),
            text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", **dtype_kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            vae=AutoencoderKL.from_pretrained(folder / "vae", **dtype_kwargs),
            image_size=int(index["image_size"]),
            sample_shift=float(index.get("sample_shift", 1.0)),
        )
        return model.to(device).eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a folder that `from_pretrained` (and diffusers/transformers per subfolder) can load."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.vae.save_pretrained(folder / "vae")
        index = {
            "_class_name": type(self).__name__,
            "image_size": self.image_size,
            "sample_shift": self.sample_shift,
            "transformer": ["diffusers", "SD3Transformer2DModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return folder

    # ------------------------------------------------------------------ the pieces a trainer calls

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent: what `velocity` takes and `decode` turns into an image."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, self.image_size // factor, self.image_size // factor)

    def text_conditioning(self, prompts: list[str]) -> TextConditioning:
        """Tokenize (pad/truncate to the tokenizer's max length) and run the text encoder, with gradients."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt"
        )
        out = self.text_encoder(input_ids=tokens.input_ids.to(self.text_encoder.device))
        return TextConditioning(out.last_hidden_state, out.pooler_output)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> TextConditioning:
        """The conditioning for `prompts` without gradients (the text encoder is frozen during RL)."""
        return self.text_conditioning(prompts)

    def velocity(self, latents: torch.Tensor, t: float | torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        """v_theta(x_t, t, c): the transformer's output. t is flow time in [0, 1] (scalar or (B,))."""
        t = torch.as_tensor(t, device=latents.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        dtype = next(self.transformer.parameters()).dtype  # the trainer may have wrapped it (DDP): no .dtype then
        return self.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            pooled_projections=cond.pooled_prompt_embeds.to(dtype),
            timestep=(t * 1000).to(dtype),  # SD3's timestep embedding takes sigma * 1000
            return_dict=False,
        )[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> normalized latents (posterior mode)."""
        latents = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> images in [0, 1], float32."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return self.vae.decode(latents, return_dict=False)[0].float().add(1).div(2).clamp(0, 1)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        num_steps: int = 10,
        sampler: Literal["ode", "sde"] = "ode",
        eta: float = 0.7,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) for `prompts`, by Euler ODE steps or Flow-SDE steps.

        Deterministic given `seed` (or a seeded `generator`): the initial noise and the SDE noise are
        drawn on the CPU in a fixed order and moved to the model's device.
        """
        if sampler not in ("ode", "sde"):
            raise ValueError(f"sampler must be 'ode' or 'sde', got {sampler!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        cond = self.encode_prompts(prompts)
        shape = (len(prompts), *self.latent_shape)
        x = torch.randn(shape, generator=generator).to(self.device)
        x = sample_trajectory(
            lambda x_t, t: self.velocity(x_t, t, cond), x, timesteps(num_steps, self.sample_shift),
            stochastic=range(num_steps) if sampler == "sde" else (), kind="sde", eta=eta,
            noise=lambda: torch.randn(shape, generator=generator).to(self.device), mean_at_end=sampler == "sde",
        )
        return self.decode(x)
