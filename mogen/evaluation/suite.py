"""Evaluation suites: YAML files (with `include:`) validated into a typed `Suite` of forgetting probes.

A suite lists probes. Each probe is a prompt set that alignment never trains on (the toy world's held-out
split, or a file), what to measure on it, and fixed sampler settings, so the base and the aligned model are
compared on exactly the same prompts and seeds. Loading reuses the recipe loader (`mogen.config`): the same
`include:` merge and the same one-line `file: field.path: message` errors.

    seed: 0
    sampler: {num_steps: 10, images_per_prompt: 4}       # defaults, merged into every probe's `sampler:`
    probes:
      - name: heldout_count
        kind: scores                                      # scores | kl | diversity | flow_matching
        prompts: {split: heldout, tasks: [count], limit: 12}
        scorers: [{name: toy_verifier, label: count, kwargs: {attribute: count}}]
    alarm: {margin: 0.1, window: 10, patience: 2, stop: false}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from mogen.config import ConfigError, ScorerSpec, _format_validation_error, _load_with_includes, _merge, _Section
from mogen.prompts import read_prompt_file
from mogen.toyworld import TASKS, enumerate_prompts

ProbeKind = Literal["scores", "kl", "diversity", "flow_matching"]


class ProbeSampler(_Section):
    """How a probe samples. ODE sampling from fixed seeds: the same noise gives the same image for both models."""

    num_steps: int = Field(10, ge=1)
    shift: float = Field(1.0, gt=0)
    images_per_prompt: int = Field(4, ge=1)
    seed: int = Field(0, description="seed of the initial noise (and of the KL probe's SDE noise)")
    eta: float = Field(0.7, gt=0, le=1.5, description="Flow-SDE noise level of the KL probe's trajectories")
    batch_size: int = Field(32, ge=1, description="samples per forward pass (memory knob; results do not depend on it)")


class ProbePrompts(_Section):
    source: Literal["toyworld", "file"] = "toyworld"
    split: Literal["heldout", "train", "all"] = "heldout"
    tasks: list[Literal["count", "position", "text"]] | None = Field(None, description="toy-world tasks; all when unset")
    path: str | None = Field(None, description="a .txt (one prompt a line) or .jsonl file when source is 'file'")
    limit: int | None = Field(None, ge=1, description="keep this many prompts, evenly spread over the list")

    @model_validator(mode="after")
    def _file_needs_path(self) -> ProbePrompts:
        if self.source == "file" and not self.path:
            raise ValueError("path is required when source is 'file'")
        return self


class Probe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: ProbeKind = "scores"
    prompts: ProbePrompts = ProbePrompts()
    scorers: list[ScorerSpec] = Field(default_factory=list, description="kind 'scores' only")
    sampler: ProbeSampler = ProbeSampler()
    t_grid: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9], description="kind 'flow_matching': flow times to average over"
    )

    @model_validator(mode="after")
    def _kind_fits(self) -> Probe:
        if self.kind == "scores" and not self.scorers:
            raise ValueError("a 'scores' probe needs at least one entry in scorers")
        if self.kind != "scores" and self.scorers:
            raise ValueError(f"scorers only apply to kind 'scores', not {self.kind!r}")
        if self.kind == "diversity" and self.sampler.images_per_prompt < 2:
            raise ValueError("a 'diversity' probe needs sampler.images_per_prompt >= 2")
        if self.kind == "flow_matching" and self.prompts.source != "toyworld":
            raise ValueError("a 'flow_matching' probe renders its images with the toy world: prompts.source must be 'toyworld'")
        if not all(0.0 < t < 1.0 for t in self.t_grid):
            raise ValueError(f"t_grid values must lie in (0, 1), got {self.t_grid}")
        return self

    def metric_keys(self) -> list[str]:
        """The names of the metrics this probe produces (`<probe>/<metric>`)."""
        if self.kind == "scores":
            return [f"{self.name}/{s.key}" for s in self.scorers]
        return [f"{self.name}/{ {'kl': 'kl', 'diversity': 'pixel_distance', 'flow_matching': 'fm_loss'}[self.kind] }"]


class AlarmConfig(_Section):
    """The reward-hacking alarm: a trained reward keeps rising while a held-out probe worsens."""

    margin: float = Field(0.1, gt=0, description="relative worsening of a probe vs its first value that counts")
    window: int = Field(10, ge=1, description="logged steps averaged to tell whether a trained reward rose")
    patience: int = Field(2, ge=1, description="consecutive probe evaluations beyond the margin before it counts")
    stop: bool = Field(False, description="stop training when the alarm fires")
    rewards: list[str] | None = Field(None, description="trained metrics to watch; default every reward/* key")


class Suite(_Section):
    name: str = "suite"
    sampler: ProbeSampler = ProbeSampler()
    probes: list[Probe] = Field(min_length=1)
    alarm: AlarmConfig = AlarmConfig()
    grid_prompts: int = Field(4, ge=0, description="prompts per probe shown in the report's image grids")

    @model_validator(mode="after")
    def _names_unique(self) -> Suite:
        names = [p.name for p in self.probes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"probe names must be distinct, repeated: {duplicates}")
        for probe in self.probes:
            keys = probe.metric_keys()
            if len(set(keys)) != len(keys):
                raise ValueError(f"probe {probe.name!r}: scorers need distinct labels, got {keys} (set 'label')")
        return self


def load_suite(path: str | Path) -> Suite:
    """Read a suite file, merge its includes and the suite-level sampler defaults, validate, check names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found (suites live in recipes/eval/, e.g. recipes/eval/toy_quick.yaml)")
    data = _load_with_includes(path)
    defaults = data.get("sampler", {})
    if isinstance(defaults, dict) and isinstance(data.get("probes"), list):
        data["probes"] = [
            {**probe, "sampler": _merge(defaults, probe.get("sampler") or {})} if isinstance(probe, dict) else probe
            for probe in data["probes"]
        ]
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(str(path), err, root=Suite)) from None
    _check_references(suite, path)
    return suite


def _check_references(suite: Suite, path: Path) -> None:
    """Scorer names and prompt files exist: fail at load time with the field, not mid-evaluation."""
    import reward_zoo

    known = reward_zoo.names()
    for i, probe in enumerate(suite.probes):
        for j, scorer in enumerate(probe.scorers):
            if scorer.name not in known:
                raise ConfigError(f"{path}: probes.{i}.scorers.{j}.name: unknown scorer {scorer.name!r}; known: {', '.join(known)}")
        if probe.prompts.source == "file":
            prompt_file = (path.parent / probe.prompts.path).resolve()
            if not prompt_file.is_file():
                raise ConfigError(f"{path}: probes.{i}.prompts.path: file not found: {probe.prompts.path} (looked at {prompt_file})")
            probe.prompts.path = str(prompt_file)


def probe_prompts(cfg: ProbePrompts) -> list[str]:
    """The probe's prompts, in a fixed order (evenly spread subset when `limit` is set)."""
    if cfg.source == "file":
        prompts = read_prompt_file(Path(cfg.path))
    else:
        prompts = [p for task in (cfg.tasks or TASKS) for p in enumerate_prompts(cfg.split, task)]
    if cfg.limit is None or cfg.limit >= len(prompts):
        return prompts
    step = len(prompts) / cfg.limit
    return [prompts[int(i * step)] for i in range(cfg.limit)]
