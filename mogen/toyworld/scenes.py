"""The toy world's attribute space, prompt grammar, train/held-out split and scene sampling.

A scene is plain data (`Scene`): the prompt, the task and the full spec of what is drawn (each
object's kind, colour, bbox and centroid, or the letter and background colour). Rendering lives
in `render.py`, checking pixels against a prompt in `verify.py`.

Grammar (every prompt the world produces, and every prompt the verifier accepts):

    count:    "{a|an|two|three|four} {color} {kind}[s]"               "two red circles"
    position: "a[n] {color} {kind} {left of|above} a[n] {color} {kind}" "a blue square left of a green triangle"
    text:     "the letter {A-Z} on a[n] {color} background"             "the letter K on a yellow background"

Object scenes are drawn on white; objects have a fixed-ish size (`object_size`, ~10 px at 32x32)
and never overlap or touch (>= `MIN_GAP` px apart), so connected components count them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Well-separated hues (HSV hue in degrees: red 0, orange ~30, yellow ~55, green ~130, blue ~228,
# purple ~280), all saturated and bright so a hue test on a component's pixels is robust.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (250, 130, 10),
    "yellow": (235, 215, 20),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "purple": (150, 50, 200),
}
BACKGROUND_RGB = (255, 255, 255)
LETTER_RGB = (0, 0, 0)
KINDS = ("circle", "square", "triangle")
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "above")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
TASKS = ("count", "position", "text")
SPLITS = ("train", "heldout")
MIN_GAP = 2  # px between any two object bboxes (so 8-connected components never merge)


@dataclass(frozen=True)
class HeldOut:
    """Combinations that never occur in a training prompt (the held-out split has them all).

    A prompt is held-out iff it contains at least one of these; otherwise it is a training prompt.
    Every colour, kind, count and most letters still occur in training: only the *combinations*
    (and the listed letters) are new, so a probe on the held-out split tests compositional
    generalisation rather than unseen vocabulary.
    """

    color_kind: frozenset[tuple[str, str]] = frozenset(
        {("red", "triangle"), ("green", "square"), ("blue", "circle")}
    )
    count_kind: frozenset[tuple[int, str]] = frozenset({(3, "triangle"), (4, "square")})
    letters: frozenset[str] = frozenset({"G", "R", "X"})


HELD_OUT = HeldOut()


@dataclass(frozen=True)
class Item:
    """One object description in a prompt: a colour and a kind."""

    color: str
    kind: str


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. `items` has 1 entry (count task, drawn `count` times) or 2 (position,
    `items[0]` is `relation` of `items[1]`); text prompts have `letter` and `background`."""

    task: str
    items: tuple[Item, ...] = ()
    count: int = 0
    relation: str | None = None
    letter: str | None = None
    background: str | None = None


@dataclass(frozen=True)
class ObjectSpec:
    """One drawn object. bbox = (x0, y0, x1, y1), exclusive ends; centroid = (x, y) in pixels."""

    kind: str
    color: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """A prompt plus everything needed to render it exactly (`render.render_scene`)."""

    prompt: str
    spec: PromptSpec
    size: int
    objects: tuple[ObjectSpec, ...] = ()
    letter_offset: tuple[int, int] = (0, 0)  # text scenes: letter centre shift from image centre
    background_rgb: tuple[int, int, int] = BACKGROUND_RGB
    split: str = "train"  # which split the prompt belongs to (`split_of`)


def object_size(size: int) -> int:
    """Nominal object side in pixels: 10 at 32x32, scaled linearly with the image side."""
    return max(5, round(0.31 * size))


# ----------------------------------------------------------------------------- prompts


def format_prompt(spec: PromptSpec) -> str:
    """The canonical English prompt for a spec (inverse of `parse_prompt`)."""
    if spec.task == "count":
        item = spec.items[0]
        if spec.count == 1:
            return _a(f"{item.color} {item.kind}")
        return f"{COUNT_WORDS[spec.count]} {item.color} {item.kind}s"
    if spec.task == "position":
        a, b = spec.items
        return f"{_a(f'{a.color} {a.kind}')} {spec.relation} {_a(f'{b.color} {b.kind}')}"
    if spec.task == "text":
        return f"the letter {spec.letter} on {_a(spec.background)} background"
    raise ValueError(f"unknown task {spec.task!r}; expected one of {TASKS}")


def _a(noun_phrase: str) -> str:
    """English indefinite article: 'an orange circle', 'a red square'."""
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


_COLOR = "|".join(COLORS)
_KIND = "|".join(KINDS)
_COUNT_RE = re.compile(rf"^(a|an|one|two|three|four) ({_COLOR}) ({_KIND})(s?)$")
_POSITION_RE = re.compile(
    rf"^an? ({_COLOR}) ({_KIND}) (left of|above|to the left of) an? ({_COLOR}) ({_KIND})$"
)
_TEXT_RE = re.compile(rf'^the letter "?([a-z])"? on an? ({_COLOR}) background$')
_WORD_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt of the toy-world grammar (case and surrounding spaces/period ignored).

    Raises ValueError naming the prompt and showing the grammar when it does not parse, so a user
    writing their own prompts sees what is accepted.
    """
    text = " ".join(prompt.strip().rstrip(".").lower().split())
    if m := _COUNT_RE.match(text):
        count = _WORD_COUNTS[m.group(1)]
        if (count > 1) != (m.group(4) == "s"):
            raise ValueError(f"prompt {prompt!r}: count word and plural disagree ('{m.group(1)} ... {m.group(3)}{m.group(4)}')")
        return PromptSpec("count", (Item(m.group(2), m.group(3)),), count=count)
    if m := _POSITION_RE.match(text):
        a, b = Item(m.group(1), m.group(2)), Item(m.group(4), m.group(5))
        if a == b:
            raise ValueError(f"prompt {prompt!r}: the two objects must differ in colour or kind")
        relation = "left of" if m.group(3) == "to the left of" else m.group(3)
        return PromptSpec("position", (a, b), count=2, relation=relation)
    if m := _TEXT_RE.match(text):
        return PromptSpec("text", letter=m.group(1).upper(), background=m.group(2))
    raise ValueError(
        f"cannot parse toy-world prompt {prompt!r}. Accepted forms: "
        f"'{{a|two|three|four}} {{color}} {{kind}}[s]', "
        f"'a {{color}} {{kind}} {{left of|above}} a {{color}} {{kind}}', "
        f"'the letter {{A-Z}} on a {{color}} background'; colors {list(COLORS)}, kinds {list(KINDS)}."
    )


def split_of(spec: PromptSpec, held_out: HeldOut = HELD_OUT) -> str:
    """'heldout' if the spec contains any held-out combination, else 'train'."""
    if any((it.color, it.kind) in held_out.color_kind for it in spec.items):
        return "heldout"
    if spec.task == "count" and (spec.count, spec.items[0].kind) in held_out.count_kind:
        return "heldout"
    if spec.task == "text" and spec.letter in held_out.letters:
        return "heldout"
    return "train"


def _all_specs(task: str) -> list[PromptSpec]:
    items = [Item(c, k) for c in COLORS for k in KINDS]
    if task == "count":
        return [PromptSpec("count", (it,), count=n) for n in COUNT_WORDS for it in items]
    if task == "position":
        return [
            PromptSpec("position", (a, b), count=2, relation=r)
            for r in RELATIONS
            for a, b in itertools.permutations(items, 2)
        ]
    if task == "text":
        return [PromptSpec("text", letter=l, background=c) for l in LETTERS for c in COLORS]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def enumerate_prompts(split: str = "train", task: str | None = None) -> list[str]:
    """Every prompt of `split` ('train' | 'heldout' | 'all') for one task (or all), in a fixed order."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'heldout' or 'all'")
    tasks = TASKS if task is None else (task,)
    return [
        format_prompt(s)
        for t in tasks
        for s in _all_specs(t)
        if split == "all" or split_of(s) == split
    ]


# ----------------------------------------------------------------------------- layout


def _place(rng: np.random.Generator, size: int, sides: list[int]) -> list[tuple[int, int, int, int]] | None:
    """Random non-touching boxes with the given sides (>= MIN_GAP apart, 1 px from the border)."""
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        for _ in range(100):
            x0, y0 = (int(v) for v in rng.integers(1, size - side, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + MIN_GAP <= b[0] or b[2] + MIN_GAP <= a[0] or a[3] + MIN_GAP <= b[1] or b[3] + MIN_GAP <= a[1]


def _relation_holds(relation: str, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Generated scenes are unambiguous: a is entirely left of / above b, with a gap."""
    if relation == "left of":
        return a[2] + MIN_GAP <= b[0]
    return a[3] + MIN_GAP <= b[1]


def _centroid(kind: str, box: tuple[int, int, int, int]) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    cx = (x0 + x1 - 1) / 2
    # An upward triangle's centroid sits 2/3 of the way down from its apex.
    cy = y0 + 2 * (y1 - 1 - y0) / 3 if kind == "triangle" else (y0 + y1 - 1) / 2
    return (cx, cy)


def scene_from_prompt(prompt: str, rng: np.random.Generator, size: int = 32) -> Scene:
    """A random scene that satisfies `prompt` (any prompt of the grammar, including held-out ones)."""
    if size < 16:
        raise ValueError(f"size={size}: the toy world needs images of at least 16x16 pixels")
    spec = parse_prompt(prompt)
    prompt = format_prompt(spec)
    if spec.task == "text":
        jitter = max(1, size // 16)
        dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        return Scene(prompt, spec, size, letter_offset=(dx, dy), background_rgb=COLORS[spec.background],
                     split=split_of(spec))
    items = list(spec.items) * spec.count if spec.task == "count" else list(spec.items)
    nominal = object_size(size)
    while True:  # rejection sampling; with <= 4 objects of ~0.31*size this succeeds in a few tries
        sides = [int(s) for s in rng.integers(nominal - 1, nominal + 2, size=len(items))]
        boxes = _place(rng, size, sides)
        if boxes is None:
            continue
        if spec.task == "position" and not _relation_holds(spec.relation, boxes[0], boxes[1]):
            continue
        objects = tuple(
            ObjectSpec(it.kind, it.color, box, _centroid(it.kind, box)) for it, box in zip(items, boxes)
        )
        return Scene(prompt, spec, size, objects=objects, split=split_of(spec))


def sample_scene(
    rng: np.random.Generator,
    split: str = "train",
    task: str | None = None,
    size: int = 32,
) -> Scene:
    """One random scene: a task uniformly from TASKS (or `task`), a prompt uniformly from that task's
    prompts in `split`, then a random layout. Deterministic given the rng state."""
    task = TASKS[int(rng.integers(len(TASKS)))] if task is None else task
    prompts = _prompts_cached(split, task)
    return scene_from_prompt(prompts[int(rng.integers(len(prompts)))], rng, size)


def sample_scenes(
    n: int,
    rng: np.random.Generator,
    split: str = "train",
    tasks: tuple[str, ...] | None = None,
    size: int = 32,
) -> list[Scene]:
    """`n` scenes; each draws its task uniformly from `tasks` (default: all of TASKS)."""
    tasks = TASKS if tasks is None else tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected a subset of {TASKS}")
    return [sample_scene(rng, split, tasks[int(rng.integers(len(tasks)))], size) for _ in range(n)]


@lru_cache(maxsize=None)
def _prompts_cached(split: str, task: str) -> tuple[str, ...]:
    return tuple(enumerate_prompts(split, task))
