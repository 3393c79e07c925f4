"""Recipes: YAML files (with `include:` and `--set` overrides) validated into a typed `Recipe`.

A recipe is data, never code: YAML is read with `yaml.safe_load`, scorers are named through reward_zoo's
registry, and nothing in a recipe can make mogen import a module. Every error is one line that names the file,
the field path and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FIELD_PATH = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)+$")  # e.g. rewards.0.kl_budget
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class ConfigError(ValueError):
    """A recipe problem a user can fix; its message is the whole story (no traceback is shown)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(_Section):
    name: str = Field("builtin:tiny", description="'builtin:tiny' or a local diffusers folder")
    family: str = Field("tiny", description="which adapter loads `name`: a family of mogen.models.registry.FAMILIES")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    resolution: int | None = Field(None, ge=16, description="image side in pixels (diffusers families); the model's default if unset")
    max_sequence_length: int | None = Field(None, ge=1, description="text tokens (diffusers families); the pipeline's default if unset")
    num_frames: int | None = Field(None, ge=1, description="frames per video (wan: 4 k + 1); the pipeline's default if unset")
    offload: bool = Field(False, description="keep text encoders and VAE on the CPU except while they run (diffusers families)")
    gradient_checkpointing: bool = Field(False, description="recompute transformer activations in backward (memory)")

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        from mogen.models.registry import FAMILIES  # plain data: imports no model code

        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        return family


class LoraConfig(_Section):
    rank: int = Field(32, ge=1)
    alpha: float = Field(64.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    init: Literal["gaussian", "default", "zeros"] = "gaussian"


class PromptsConfig(_Section):
    source: Literal["toyworld", "file"] = "toyworld"
    split: Literal["train", "heldout"] = "train"
    tasks: list[str] | None = Field(None, description="toy-world tasks to draw from; all when unset")
    path: str | None = Field(None, description="a .txt (one prompt a line) or .jsonl file when source is 'file'")

    @model_validator(mode="after")
    def _file_needs_path(self) -> PromptsConfig:
        if self.source == "file" and not self.path:
            raise ValueError("path is required when source is 'file'")
        return self


class SamplerConfig(_Section):
    kind: Literal["sde", "cps", "ode"] = Field("sde", description=(
        "the kernel of the rollout's `train_steps` stochastic steps: Flow-SDE or CPS; 'ode' samples deterministically"
        " (nft/awm only: dppo/grpo train on the stochastic steps' log-probs)"))
    eta: float = Field(0.7, gt=0, le=1.5)
    num_steps: int = Field(10, ge=2)
    shift: float = Field(1.0, gt=0)
    train_window: tuple[int, int] = Field((0, 5), description=(
        "[start, end) of the steps trained steps come from (nft/awm: the step times training times come from)"))
    train_steps: int = Field(3, ge=1, description=(
        "stochastic, trained steps drawn from the window per batch; nft/awm also train each sample at this many"
        " of the window's step times (algorithm.nft/awm.time_scheme): the same trained forwards per sample"))
    guidance_scale: float = Field(1.0, ge=1.0)

    @model_validator(mode="after")
    def _window_fits(self) -> SamplerConfig:
        start, end = self.train_window
        if not 0 <= start < end <= self.num_steps:
            raise ValueError(f"train_window must satisfy 0 <= start < end <= num_steps ({self.num_steps})")
        if self.train_steps > end - start:
            raise ValueError(f"train_steps ({self.train_steps}) exceeds the window size ({end - start})")
        if self.kind == "cps" and end == self.num_steps:
            raise ValueError("with kind 'cps' the last step has std 0 and cannot be trained: end train_window earlier")
        return self


class RolloutConfig(_Section):
    prompts_per_batch: int = Field(4, ge=1)
    group_size: int = Field(8, ge=2, description="samples per prompt; advantages are normalized within a group")
    chunk_size: int | None = Field(None, ge=1, description=(
        "samples per process rolled out at a time (null: the process's whole share at once). Smaller chunks need"
        " less memory and let scoring overlap sampling (`overlap`); a sample's noise does not depend on it, but a"
        " forward over fewer samples rounds differently, so runs with different chunk sizes agree only to float"
        " precision"))
    overlap: bool = Field(True, description=(
        "with `chunk_size`: decode and score each finished chunk on a background thread while the next chunk"
        " samples (pays with a slow scorer: OCR, remote, vlm_judge). Changes no bit of the run"))


class ScorerSpec(_Section):
    """A scorer named through reward_zoo's registry, with its arguments (recipes' rewards, eval probes)."""

    name: str = Field(description="a scorer registered in reward_zoo (see `mogen rewards list`)")
    label: str | None = Field(None, description="name in logs; defaults to name (+ _attribute)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        attribute = self.kwargs.get("attribute")
        return f"{self.name}_{attribute}" if attribute else self.name


class RewardConfig(ScorerSpec):
    """One trained objective: a scorer, its weight and its KL budgets."""

    weight: float = 1.0
    kl_budget: float | None = Field(None, gt=0, description="this objective's DPPO delta; algorithm.delta if unset (dppo only)")
    max_ref_kl: float | None = Field(None, gt=0, description="stop this objective while KL to base exceeds this")
    frames: int | list[int] = Field(4, description="video models: score this many evenly spaced frames, or these indices")
    frame_reduce: Literal["mean", "min"] = Field("mean", description="video models: a video's score from its frames' scores")


class AdvantageConfig(_Section):
    mode: Literal["per_objective", "sum_then_normalize"] = "per_objective"
    std: Literal["group", "batch"] = Field(
        "group", description="divide by each group's std, or by one std of the whole batch (UniRL, flow_grpo)"
    )
    std_floor: float = Field(1e-2, gt=0, description="a std below this is raised to it (no divide-by-zero)")
    clip: float | None = Field(5.0, gt=0, description="clip advantages to [-clip, clip]; null: no clip")


class NFTConfig(_Section):
    """DiffusionNFT's knobs (mogen.nft). Defaults: NVlabs/DiffusionNFT config/nft.py (SD3.5-Medium) and
    scripts/train_nft_sd3.py; the cited values are that reference's."""

    beta: float = Field(1.0, gt=0, description=(
        "the paper's beta, mixing coefficient of the implicit policies v+- = v_old +- beta (v - v_old): the inverse"
        " step size of its trust region around the old policy (config/nft.py: 1.0; 0.1 for OCR and multi-reward)."
        " Not algorithm.beta, the penalty to the base model"))
    advantage_clip: float = Field(5.0, gt=0, description=(
        "c in r = clip(A, -c, c) / (2c) + 1/2; the loss is scaled by c (config/base.py adv_clip_max 5)"))
    adaptive_weighting: bool = Field(True, description=(
        "divide each reconstruction loss by sg(mean |x0_hat - x0|) (train_nft_sd3.py, always on there)"))
    ema_ramp: float = Field(0.001, ge=0, description=(
        "the old adapter's EMA decay after training step s is min(ema_ramp * s, ema_max) (train_nft_sd3.py"
        " return_decay type 1: 0.001; the reference counts gradient steps, one per epoch in config/nft.py)"))
    ema_max: float = Field(0.5, ge=0, le=1, description="cap of the old adapter's EMA decay (return_decay type 1: 0.5)")
    ema_flat_steps: int = Field(0, ge=0, description=(
        "training steps with decay 0 (the old adapter copies the trained one) before the ramp: d = min(ema_ramp *"
        " (s - ema_flat_steps), ema_max) (return_decay type 1: 0; type 2, OCR: 75 gradient steps)"))
    time_scheme: Literal["grid_subset", "grid_stratified"] = Field("grid_subset", description=(
        "training times: per sample, `sampler.train_steps` distinct step times of `sampler.train_window`"
        " (grid_subset, train_nft_sd3.py), or one per stratum of the window, shared by the batch (grid_stratified)"))


class AWMConfig(_Section):
    """Advantage Weighted Matching's knobs (mogen.awm). Defaults: scxue/advantage_weighted_matching
    config/dgx_awm.py (geneval_sd3_no_cfg_1node) and scripts/train_sd3_awm.py."""

    weighting: Literal["uniform", "t", "ghuber"] = Field("ghuber", description=(
        "how the flow-matching error m becomes the log-likelihood surrogate ell (dgx_awm.py: ghuber)"))
    ghuber_power: float = Field(0.25, gt=0, description="p of the generalised Huber weighting (dgx_awm.py: 0.25)")
    clip_range: float = Field(1.0, gt=0, description="PPO clip of the ratio exp(ell - ell_old) (dgx_awm.py: 1)")
    advantage_clip: float = Field(5.0, gt=0, description="c in a = clip(A, -c, c) / c * advantage_max (adv_clip_max 5)")
    advantage_max: float = Field(1.0, gt=0, description="scale of the clipped advantage (dgx_awm.py: 1)")
    ema_ramp: float = Field(0.001, ge=0, description=(
        "the EMA adapter's decay after training step s is min(ema_ramp * s, ema_max) (train_sd3_awm.py 'linear': 0.001)"))
    ema_max: float = Field(0.3, ge=0, le=1, description="cap of the EMA adapter's decay (dgx_awm.py kl_ema_decay 0.3)")
    ema_beta: float = Field(1.0, ge=0, description=(
        "weight of the penalty mean (v - v_ema)^2 to the EMA adapter; 0 drops the EMA adapter (dgx_awm.py ema_beta 1)"))
    time_scheme: Literal["grid_subset", "grid_stratified"] = Field("grid_stratified", description=(
        "training times: one step time per stratum of `sampler.train_window`, shared by the batch (grid_stratified,"
        " train_sd3_awm.py time_type 'discrete' / 'discrete_wo_init'), or a random subset per sample (grid_subset)"))
    include_init: bool = Field(False, description=(
        "may step 0 (t = 1, x_t pure noise) be a training time; dgx_awm.py trains GenEval and OCR without it"
        " ('discrete_wo_init'), PickScore with it ('discrete')"))


class AlgorithmConfig(_Section):
    name: Literal["dppo", "grpo", "nft", "awm"] = Field("dppo", description=(
        "dppo (Flow-DPPO), grpo (Flow-GRPO's ratio clip), nft (DiffusionNFT), awm (Advantage Weighted Matching)"))
    delta: float = Field(
        5e-6, gt=0, description="DPPO's per-step KL threshold (exact KL, mean over latent dimensions): the reference's tau"
    )
    clip_range: float = Field(1e-4, gt=0, description="GRPO's ratio clip range")
    beta: float = Field(0.0, ge=0, description=(
        "weight of the penalty to the base model (LoRA disabled): the exact KL of the trained steps for dppo/grpo;"
        " for nft/awm the references' velocity penalty mean_d (v - v_base)^2 at the training times (one more"
        " no-grad forward per training time)"))
    updates_per_batch: int = Field(1, ge=1)
    minibatches: int = Field(1, ge=1, description="gradient steps per pass over a batch")
    nft: NFTConfig = NFTConfig()
    awm: AWMConfig = AWMConfig()

    @property
    def uses_forward_process(self) -> bool:
        """nft and awm train on re-noised final samples, not on the rollout's recorded steps."""
        return self.name in ("nft", "awm")

    @property
    def keeps_old_adapter(self) -> bool:
        """nft samples from and contrasts with a lagging (EMA) copy of the LoRA; awm penalises towards one."""
        return self.name == "nft" or (self.name == "awm" and self.awm.ema_beta > 0)


class OptimConfig(_Section):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class TrainConfig(_Section):
    steps: int = Field(100, ge=1)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare `no` as false; accept it as the 'no' it was written as."""
        return "no" if value is False else value
    grad_clip: float | None = Field(1.0, gt=0)
    checkpoint_every: int = Field(25, ge=1)
    sample_every: int = Field(25, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    diagnostics_every: int = Field(
        10, ge=1, description="measure kl/ref and kl/old_new (extra no-grad forwards) every N steps, and at the first and last"
    )
    log_with: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])


class EvalConfig(_Section):
    suites: list[str] = Field(default_factory=list)
    every: int = Field(0, ge=0, description="run the suites every N steps; 0 disables")


class Recipe(_Section):
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    prompts: PromptsConfig = PromptsConfig()
    sampler: SamplerConfig = SamplerConfig()
    rollout: RolloutConfig = RolloutConfig()
    rewards: list[RewardConfig] = Field(min_length=1)
    advantage: AdvantageConfig = AdvantageConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str = "runs/default"

    @model_validator(mode="after")
    def _objective_keys_unique(self) -> Recipe:
        keys = [r.key for r in self.rewards]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"objectives need distinct labels, repeated: {duplicates} (set 'label')")
        return self

    @model_validator(mode="after")
    def _algorithm_fits_sampler_and_rewards(self) -> Recipe:
        """Cross-section rules of the algorithm; each message starts with the field it is about."""
        algorithm, sampler = self.algorithm, self.sampler
        if not algorithm.uses_forward_process:
            if sampler.kind == "ode":
                raise ValueError(f"sampler.kind: 'ode' has no stochastic step for {algorithm.name} to train: use sde or"
                                 " cps, or algorithm.name nft / awm (they train on the final samples)")
            return self
        for i, reward in enumerate(self.rewards):
            if reward.kl_budget is not None:
                raise ValueError(f"rewards.{i}.kl_budget: a per-objective DPPO delta, and {algorithm.name} has no per-step"
                                 " trust region: balance objectives with weight, bound one with max_ref_kl")
            if reward.max_ref_kl is not None and sampler.kind == "ode":
                raise ValueError(f"rewards.{i}.max_ref_kl: needs kl/ref, measured exactly on the rollout's stochastic"
                                 " steps, and sampler.kind 'ode' has none: use sde or cps")
        start, end = sampler.train_window
        if algorithm.name == "awm" and not algorithm.awm.include_init:
            usable = end - max(start, 1)
            if usable < sampler.train_steps:
                raise ValueError(f"algorithm.awm.include_init: false leaves {usable} step times in sampler.train_window"
                                 f" {list(sampler.train_window)}, fewer than sampler.train_steps ({sampler.train_steps})")
        return self


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; the override wins, lists are replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_with_includes(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file with its `include:` list merged in first (relative to the file), so the file overrides it."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: include cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    data = _read_yaml(path)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include must be a file path or a list of file paths")
    merged: dict[str, Any] = {}
    for include in includes:
        target = (path.parent / include).resolve()
        if not target.is_file():
            raise ConfigError(f"{path}: include: file not found: {include} (looked at {target})")
        merged = _merge(merged, _load_with_includes(target, (*chain, path)))
    return _merge(merged, data)


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `--set dotted.path=value`; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set rollout.group_size=8")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: {where} is not an index of a list of {len(node)} items")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:depth])} is a value, not a section")
    return data


def _format_validation_error(source: str, err: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line per problem: `file: field.path: message`. `root` is the validated model (Recipe by default)."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            message = f"unknown field '{problem['loc'][-1]}'"
            parent = _model_at(problem["loc"][:-1], root or Recipe)
            if parent is not None:
                message += f"; allowed: {', '.join(parent.model_fields)}"
        else:
            message = problem["msg"].removeprefix("Value error, ")
            if "input" in problem and problem["type"] not in ("missing",) and not isinstance(problem["input"], dict):
                message += f" (got {problem['input']!r})"
            field, _, rest = message.partition(": ")
            if not problem["loc"] and FIELD_PATH.match(field):  # a cross-section rule names its field first
                where, message = field, rest
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class at a location in the `root` model's tree (for listing allowed fields)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, merge its includes, apply `--set` overrides and validate it."""
    path = Path(path)
    data = _load_with_includes(path)
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(str(path), err)) from None
    recipe.eval.suites = [_resolve(s, path.parent) for s in recipe.eval.suites]
    if recipe.prompts.path:
        recipe.prompts.path = _resolve(recipe.prompts.path, path.parent)
    return recipe


def _resolve(file: str, recipe_dir: Path) -> str:
    """A file named in a recipe: relative to the recipe's folder if it exists there, else as given (the CWD)."""
    candidate = recipe_dir / file
    return str(candidate.resolve()) if not Path(file).is_absolute() and candidate.exists() else file


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what `--dry-run` prints and every run saves as config.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
