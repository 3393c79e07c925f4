"""Where training prompts come from: the toy world's splits or a user's text/JSONL file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mogen.config import PromptsConfig
from mogen.toyworld import TASKS, enumerate_prompts

NUM_EVAL_PROMPTS = 8


def read_prompt_file(path: Path) -> list[str]:
    """One prompt a line (.txt) or one JSON object with a "prompt" field a line (.jsonl); blank lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts.path: file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: expected a JSON object with a \"prompt\" field") from None
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"prompts.path: {path} holds no prompts")
    return prompts


@dataclass
class PromptSource:
    prompts: list[str]

    @classmethod
    def build(cls, cfg: PromptsConfig) -> PromptSource:
        if cfg.source == "file":
            return cls(read_prompt_file(Path(cfg.path)))
        tasks = cfg.tasks or list(TASKS)
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"prompts.tasks: unknown toy-world task(s) {unknown}; allowed: {list(TASKS)}")
        return cls([p for task in tasks for p in enumerate_prompts(cfg.split, task)])

    def draw(self, num_prompts: int, group_size: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        """`num_prompts` distinct prompts (when there are enough), each repeated `group_size` times, and group ids."""
        chosen = rng.choice(len(self.prompts), size=num_prompts, replace=num_prompts > len(self.prompts))
        prompts = [self.prompts[i] for i in chosen for _ in range(group_size)]
        return prompts, np.repeat(np.arange(num_prompts), group_size)

    def eval_prompts(self) -> list[str]:
        """A fixed, evenly spread subset for the sample grids of a run."""
        index = np.linspace(0, len(self.prompts) - 1, num=min(NUM_EVAL_PROMPTS, len(self.prompts))).round().astype(int)
        return [self.prompts[i] for i in index]
