"""A procedurally generated toy world for text-to-image alignment: scenes, rendering, a pixel verifier.

Small RGB images of coloured circles/squares/triangles on white (count, colour, shape, relative
position) and single capital letters on coloured backgrounds (OCR), with prompts in plain English,
an explicit train/held-out split of attribute combinations, and a rule-based verifier that scores
an image against any prompt of the grammar from pixels alone.
"""

from mogen.toyworld.render import render_batch, render_scene, sample_batch, save_grid
from mogen.toyworld.verify import ATTRIBUTES, Component, find_objects, read_letter, verify, verify_array
from mogen.toyworld.scenes import (
    COLORS,
    HELD_OUT,
    KINDS,
    LETTERS,
    RELATIONS,
    TASKS,
    HeldOut,
    Item,
    ObjectSpec,
    PromptSpec,
    Scene,
    enumerate_prompts,
    format_prompt,
    object_size,
    parse_prompt,
    sample_scene,
    sample_scenes,
    scene_from_prompt,
    split_of,
)

__all__ = [
    "ATTRIBUTES", "Component", "find_objects", "read_letter", "verify", "verify_array",
    "COLORS", "HELD_OUT", "KINDS", "LETTERS", "RELATIONS", "TASKS", "HeldOut", "Item", "ObjectSpec",
    "PromptSpec", "Scene", "enumerate_prompts", "format_prompt", "object_size", "parse_prompt",
    "render_batch", "render_scene", "sample_batch", "sample_scene", "sample_scenes", "save_grid",
    "scene_from_prompt", "split_of",
]
