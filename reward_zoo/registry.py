"""Name -> scorer class. Recipes reach scorers only through these names, never through module paths.

Built-in scorers are listed below (imported lazily: importing reward_zoo does not import open_clip,
transformers or OCR engines). Third-party packages add scorers through the `mogen.rewards`
entry-point group; in their pyproject.toml:

    [project.entry-points."mogen.rewards"]
    my_reward = "my_package.rewards:MyScorer"      # a reward_zoo.Scorer subclass

Only installed distributions can declare entry points, so a recipe can name a scorer but can never
make mogen import a module of its choosing. A package can also `register` its scorers from its own code
when it is imported (mogen does, for its toy verifier): that works from a source checkout whose installed
metadata predates the entry point.

Importing this module does not import torch (the `mogen rewards` command line and `import mogen` stay fast).
"""

from __future__ import annotations

import importlib
import inspect
import typing
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from reward_zoo.errors import MissingWeightsError, ScorerConfigError

if TYPE_CHECKING:
    import torch

    from reward_zoo.base import Scorer

ENTRY_POINT_GROUP = "mogen.rewards"

_BUILTIN: dict[str, str] = {
    "ocr": "reward_zoo.ocr:OCRScorer",
    "compressibility": "reward_zoo.simple:Compressibility",
    "incompressibility": "reward_zoo.simple:Incompressibility",
    "vivid": "reward_zoo.simple:Vivid",
    "aesthetic": "reward_zoo.clip_models:Aesthetic",
    "clipscore": "reward_zoo.clip_models:ClipScore",
    "hpsv2": "reward_zoo.clip_models:HPSv2",
    "hpsv3": "reward_zoo.hpsv3:HPSv3",
    "pickscore": "reward_zoo.pickscore:PickScore",
    "imagereward": "reward_zoo.imagereward:ImageRewardScorer",
    "vlm_judge": "reward_zoo.vlm_judge:VLMJudge",
    "remote": "reward_zoo.remote:RemoteScorer",
}


@dataclass(frozen=True)
class RewardInfo:
    """One row of `available()`."""

    name: str
    description: str
    weights_present: bool
    weights: str  # where the weights are looked for with default kwargs, or why they are not needed
    source: str  # "reward_zoo", or the package or distribution that registered it
    arguments: dict[str, Any]  # keyword argument -> default


_REGISTERED: dict[str, EntryPoint] = {}  # added by `register`, loaded like the installed entry points


def register(name: str, target: str) -> None:
    """Add the scorer class `target` ("package.module:Class", imported when first used) under `name`.

    For a package's own code (mogen registers its toy verifier when imported), never for recipes. Registering
    a name again with the same target is a no-op; a built-in name or another target for a taken name is refused.
    """
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"register({name!r}, {target!r}): the target must be 'package.module:Class'")
    if name in _BUILTIN or (name in _REGISTERED and _REGISTERED[name].value != target):
        raise ValueError(f"register({name!r}, {target!r}): the reward name '{name}' is taken")
    _REGISTERED[name] = EntryPoint(name=name, value=target, group=ENTRY_POINT_GROUP)


def _entry_points() -> dict[str, Any]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN:
            warnings.warn(f"entry point {ep.value!r} reuses the built-in reward name '{ep.name}'; ignoring it")
        elif ep.name in _REGISTERED:  # the registering package's own entry point, or a clash it wins
            if ep.value != _REGISTERED[ep.name].value:
                warnings.warn(f"entry point {ep.value!r} reuses the registered reward name '{ep.name}'; ignoring it")
        else:
            found[ep.name] = ep
    return found


def names() -> list[str]:
    """Every registered reward name: built-ins first, then registered and entry-point names, sorted."""
    return sorted(_BUILTIN) + sorted([*_REGISTERED, *_entry_points()])


def _unknown(name: str) -> ScorerConfigError:
    return ScorerConfigError(
        f"unknown reward {name!r}; known rewards: {', '.join(names())}. Third-party rewards register "
        f"through the '{ENTRY_POINT_GROUP}' entry-point group of an installed package."
    )


def scorer_class(name: str) -> tuple[type[Scorer], str]:
    """(class, source) for a registered name."""
    from reward_zoo.base import Scorer

    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr), "reward_zoo"
    ep = _REGISTERED.get(name) or _entry_points().get(name)
    if ep is None:
        raise _unknown(name)
    source = ep.dist.name if ep.dist is not None else ep.module.split(".")[0]  # registered in-process: its package
    try:
        cls = ep.load()
    except Exception as error:
        raise ScorerConfigError(f"reward '{name}' from {source} ({ep.value}) failed to import: {error!r}") from error
    if not (inspect.isclass(cls) and issubclass(cls, Scorer)):
        raise ScorerConfigError(f"reward '{name}' from {source} ({ep.value}) is not a reward_zoo.Scorer subclass")
    return cls, source


def arguments(cls: type[Scorer]) -> dict[str, Any]:
    """Keyword arguments of a scorer class and their defaults (inspect.Parameter.empty when required)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD}


def get(name: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kwargs: Any) -> Scorer:
    """Build the scorer registered as `name` with `kwargs`, loaded once, on `device`/`dtype` if given."""
    cls, _ = scorer_class(name)
    accepted = arguments(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = [] if takes_any else sorted(set(kwargs) - set(accepted))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in accepted.items())
        raise ScorerConfigError(f"reward '{name}' has no argument {', '.join(map(repr, unknown))}; its arguments: {listing}")
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ScorerConfigError(f"reward '{name}' needs argument(s) {', '.join(map(repr, missing))}")
    kwargs = _validate_types(name, cls, kwargs)
    try:
        scorer = cls(**kwargs)
    except (ScorerConfigError, MissingWeightsError):
        raise
    except (TypeError, ValueError) as error:
        raise ScorerConfigError(f"reward '{name}': bad argument ({error})") from error
    return scorer.to(device, dtype) if device is not None or dtype is not None else scorer


def _validate_types(name: str, cls: type[Scorer], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check (and leniently coerce, e.g. "0.5" -> 0.5) each argument against the scorer's type hints."""
    from pydantic import TypeAdapter, ValidationError

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations (third-party code): skip the check
        return kwargs
    checked = dict(kwargs)
    for key, value in kwargs.items():
        if key not in hints:
            continue
        try:
            checked[key] = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError:
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise ScorerConfigError(f"reward '{name}': argument '{key}' must be {expected}, got {value!r}") from None
    return checked


def available() -> dict[str, RewardInfo]:
    """Every registered reward with its description and whether its default weights are on this machine."""
    table = {}
    for name in names():
        try:
            cls, source = scorer_class(name)
            present, where = cls.weights_status()
            table[name] = RewardInfo(name, cls.description, present, where, source, arguments(cls))
        except Exception as error:  # noqa: BLE001 - one broken plugin must not hide the others
            table[name] = RewardInfo(name, f"(failed to load: {error})", False, "", "?", {})
    return table
