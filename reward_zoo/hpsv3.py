"""HPSv3 (arXiv 2508.03789): Qwen2-VL-7B-Instruct with an MLP head on the hidden state of a `<|Reward|>` token.

    (mu, log sigma) = MLP(h[<|Reward|>])        score = mu        (sigma: the model's own uncertainty)

h is the decoder's last hidden state (after the final norm) at the `<|Reward|>` token, which ends the
fixed instruction the model was trained with; MLP = Linear(H,1024)-ReLU-Dropout-Linear(1024,16)-ReLU-
Linear(16,2), run in float32. It was trained with the uncertainty-aware ranking loss
    -E_{z ~ N(mu_A - mu_B, sigma_A^2 + sigma_B^2)} log sigmoid(z),
so only differences of mu are meaningful; higher is better (reference: MizzenAI/HPSv3, hpsv3/inference.py
and hpsv3/model/qwen2vl_trainer.py, class Qwen2VLRewardModelBT; head layout from hpsv3/config/HPSv3_7B.yaml).

Inputs are built as the release builds them (hpsv3/inference.py, hpsv3/dataset/utils.py): the 8-bit RGB image
resized with PIL bicubic to Qwen2-VL's `smart_resize` of `pixels` (256·28·28 = 200704, about 448x448), one
user turn [image, instruction with the prompt + "<|Reward|>" suffix] through the base model's chat template
with the generation prompt, right padding. The release was trained with transformers 4.45, whose forward
gave the decoder no position ids: every token, the image's included, sits at its 1-D sequence index on all
three M-RoPE axes (not Qwen2-VL's (t, h, w) grid positions for image tokens). We pass those positions explicitly.

Files: `checkpoint` is the release's HPSv3.safetensors (the whole model's state dict: `visual.*`, `model.*`,
`lm_head.*`, `rm_head.*` as transformers 4.45 names them; the >= 4.52 names `model.visual.*`,
`model.language_model.*` load too, as does a torch `.pth` state dict); `base` is a Qwen2-VL-7B-Instruct
directory (or cached hub id) of which only config.json and the processor files are read. The model is
built without initialising weights and takes the checkpoint's tensors directly; the LM head is not loaded.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from reward_zoo.base import Scorer, ScorerConfigError, ScoreResult, to_pil
from reward_zoo.weights import HF_PREFIX, locate_file, locate_pretrained_dir, resolve_file, resolve_pretrained_dir

_CHECKPOINT = f"{HF_PREFIX}MizzenAI/HPSv3/HPSv3.safetensors"
_BASE = "Qwen/Qwen2-VL-7B-Instruct"
_PIXELS = 256 * 28 * 28
REWARD_TOKEN = "<|Reward|>"

# The instruction HPSv3 was trained and released with (MizzenAI/HPSv3, hpsv3/dataset/data_collator_qwen.py,
# INSTRUCTION + prompt_with_special_token; MIT license). It is part of the model's input: the checkpoint's
# scores are only valid with this exact text, so it is reproduced verbatim, trailing spaces included.
INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
    "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
    "worst and 10 being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense "
    "of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, "
    "or adult material. If such content is present, the image quality and satisfaction score should be the "
    "lowest possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) "
    "align with the textual description. The subject should match the description in terms of number, "
    "appearance, and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well "
    "the image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the "
    "image logically fit the scenario described in the prompt. The environment should support and enhance the "
    "subject without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in "
    "the image. The generated content should not introduce elements that conflict with or distort the "
    "original description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)
REWARD_SUFFIX = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


class HPSv3Head(nn.Sequential):
    """The release's `rm_head` (its 'ranknet' type without kwargs); indices match its state-dict keys 0, 3, 5."""

    def __init__(self, hidden_size: int, width: int = 1024, bottleneck: int = 16, outputs: int = 2):
        super().__init__(
            nn.Linear(hidden_size, width), nn.ReLU(), nn.Dropout(0.05),
            nn.Linear(width, bottleneck), nn.ReLU(), nn.Linear(bottleneck, outputs),
        )


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on CPU, without the LM head (a .safetensors file, or a torch state dict)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if not k.startswith("lm_head.")}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)  # the release's loader accepts {"model": state_dict} too
    return {k: v for k, v in state.items() if not k.startswith("lm_head.")}


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(Qwen2VLModel state dict, head state dict) from either transformers layout of Qwen2-VL."""
    backbone, head, unknown = {}, {}, []
    for key, tensor in state.items():
        if key.startswith("rm_head."):
            head[key.removeprefix("rm_head.")] = tensor
        elif key.startswith(("model.visual.", "model.language_model.")):  # transformers >= 4.52
            backbone[key.removeprefix("model.")] = tensor
        elif key.startswith("visual."):  # transformers 4.45 (the release)
            backbone[key] = tensor
        elif key.startswith("model."):
            backbone["language_model." + key.removeprefix("model.")] = tensor
        else:
            unknown.append(key)
    if not head:
        raise ValueError("not an HPSv3 checkpoint: it has no rm_head.* weights")
    if unknown:
        raise ValueError(f"not an HPSv3 checkpoint: unknown keys {unknown[:3]}")
    return backbone, head


def build_model(checkpoint_path: str, base_dir: str, reward_token_id: int) -> tuple[nn.Module, HPSv3Head]:
    """(Qwen2VLModel, head) with the checkpoint's tensors, built from the base config without a random init."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen2VLModel

    backbone_state, head_state = split_checkpoint(read_checkpoint(checkpoint_path))
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    if config.model_type != "qwen2_vl":
        raise ValueError(f"the base config is a {config.model_type!r} model; HPSv3 is a Qwen2-VL-7B-Instruct")
    vocab = backbone_state.get("language_model.embed_tokens.weight")
    if vocab is None or reward_token_id >= vocab.shape[0]:
        raise ValueError(f"the checkpoint has no embedding row for {REWARD_TOKEN} (id {reward_token_id} in the tokenizer)")
    if not {"0.weight", "3.weight", "5.weight"} <= set(head_state):
        raise ValueError(f"its rm_head keys {sorted(head_state)} are not the release's MLP (0, 3, 5)")
    config.text_config.vocab_size = vocab.shape[0]  # the release resized the embeddings to its tokenizer
    with init_empty_weights():  # parameters on the meta device: no 7B random init, the checkpoint fills them
        model = Qwen2VLModel._from_config(config, attn_implementation="sdpa")
    model.load_state_dict(backbone_state, strict=True, assign=True)  # RuntimeError on a missing key or shape
    (width, hidden_size), bottleneck = head_state["0.weight"].shape, head_state["3.weight"].shape[0]
    head = HPSv3Head(hidden_size, width, bottleneck, outputs=head_state["5.weight"].shape[0])
    head.load_state_dict(head_state, strict=True)
    return model, head


class HPSv3(Scorer):
    name = "hpsv3"
    description = "HPSv3 human preference (Qwen2-VL-7B + reward head, transformers, local checkpoint + base config)"

    def __init__(
        self,
        checkpoint: str = _CHECKPOINT,
        base: str = _BASE,
        pixels: int = _PIXELS,
        torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
        batch_size: int | None = None,
    ):
        """checkpoint: HPSv3.safetensors (path or hf:// spec in the local cache); base: a Qwen2-VL-7B-Instruct
        directory or cached hub id (config.json + processor files; its weights are not read); pixels: image
        area the model sees (the release's 256·28·28); torch_dtype: the backbone's dtype (the head and the
        score are float32), also settable later with `.to(dtype=...)`."""
        super().__init__(batch_size)
        import transformers
        from packaging.version import Version

        if Version(transformers.__version__) < Version("4.52"):
            raise ScorerConfigError(f"reward 'hpsv3' needs transformers>=4.52 (installed: {transformers.__version__})")
        from transformers import AutoProcessor

        how = "huggingface-cli download MizzenAI/HPSv3 HPSv3.safetensors, then pass its path"
        checkpoint_path = resolve_file(self.name, checkpoint, "the HPSv3 checkpoint", how)
        base_dir = resolve_pretrained_dir(
            self.name, base, "the Qwen2-VL-7B-Instruct config and processor",
            f"huggingface-cli download {_BASE} --exclude '*.safetensors' (only the config and processor files are read)",
        )
        self.pixels = pixels
        self.processor = AutoProcessor.from_pretrained(base_dir, local_files_only=True, use_fast=False)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"  # the sequential positions below assume it, as the release does
        if REWARD_TOKEN not in tokenizer.get_vocab():  # the release adds it to the base tokenizer, as here
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [REWARD_TOKEN]}, replace_additional_special_tokens=False
            )
        self.reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)

        try:
            self.model, self.head = build_model(checkpoint_path, base_dir, self.reward_token_id)
        except (ValueError, RuntimeError, OSError) as error:
            reason = " ".join(str(error).split())[:400]  # torch's load errors span lines
            raise ScorerConfigError(f"reward 'hpsv3': cannot load {checkpoint_path} with {base_dir}: {reason}") from error
        self.model.eval().requires_grad_(False)
        self.head.eval().requires_grad_(False)
        self.dtype = getattr(torch, torch_dtype)
        self.to(dtype=self.dtype)

    @classmethod
    def weights_status(cls, checkpoint: str = _CHECKPOINT, base: str = _BASE, **_: Any) -> tuple[bool, str]:
        present = locate_file(checkpoint) is not None and locate_pretrained_dir(base) is not None
        return present, f"{checkpoint} + {base} (config and processor)"

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HPSv3:
        super().to(device, dtype)
        self.head.to(device=self.device, dtype=torch.float32)  # the release keeps rm_head in float32
        return self

    def _resize(self, image: Image.Image) -> Image.Image:
        """PIL bicubic to Qwen2-VL's smart_resize of `pixels`: sides multiples of patch·merge (28), area ≈ pixels."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        processor = self.processor.image_processor
        factor = processor.patch_size * processor.merge_size
        height, width = smart_resize(image.height, image.width, factor, min_pixels=self.pixels, max_pixels=self.pixels)
        return image.resize((width, height), Image.BICUBIC)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> ScoreResult:
        conversations = [
            [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX},
            ]}]
            for prompt in prompts
        ]
        texts = self.processor.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(
            text=texts, images=[self._resize(image) for image in to_pil(images)], padding=True, return_tensors="pt",
            do_resize=False,  # already resized; a second smart_resize is not the identity (420x504 -> 392x476)
        ).to(self.device)
        input_ids = inputs["input_ids"]
        batch, length = input_ids.shape
        positions = torch.arange(length, device=self.device).expand(3, batch, length)  # 1-D on every M-RoPE axis
        hidden = self.model(
            input_ids=input_ids, attention_mask=inputs["attention_mask"], position_ids=positions,
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"], use_cache=False,
        ).last_hidden_state
        # The template's <|Reward|> is the last one in each row (a prompt may contain the string too).
        is_reward = input_ids == self.reward_token_id
        column = torch.where(is_reward, torch.arange(length, device=self.device), -1).amax(dim=1)
        out = self.head(hidden[torch.arange(batch, device=self.device), column.clamp(min=0)].float())  # (B, 2)
        found = column >= 0
        mu = torch.where(found, out[:, 0], float("nan"))
        details = {"sigma": torch.where(found, out[:, 1].exp(), float("nan"))} if out.shape[1] > 1 else {}
        return ScoreResult(mu, details=details)
