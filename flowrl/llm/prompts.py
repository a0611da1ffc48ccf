"""Prompt rows of a text run: a synthetic task (`task:mul3x2`) or a JSONL file with a "prompt"
field per line; every other field reaches the reward functions as a keyword (TRL's convention)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .task import ArithmeticTask

Row = dict[str, str]


def read_jsonl(path: str) -> list[Row]:
    """Rows of a JSONL prompt file, each with a "prompt"; errors name the file and line."""
    rows = []
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"prompts={path!r}: no such file (expected task:NAME or a .jsonl file)")
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f'{path}, line {number}: expected an object with a "prompt" string')
        rows.append(row)
    if not rows:
        raise ValueError(f"prompts={path!r} has no rows")
    return rows


class TextPrompts:
    """Prompt rows per iteration as a function of (seed, iteration): resuming needs no data state."""

    def __init__(self, spec: str, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self.task = ArithmeticTask(spec.split(":", 1)[1]) if spec.startswith("task:") else None
        self.pool = None if self.task is not None else read_jsonl(spec)
        self.held_out_prompts = {row["prompt"] for row in self.task.held_out()} if self.task else set()

    def batch(self, iteration: int, n: int) -> list[Row]:
        """The iteration's prompt rows; a task never yields a held-out prompt."""
        rng = random.Random(hash((self.seed, iteration)) & 0x7FFFFFFF)
        if self.pool is not None:
            return [dict(rng.choice(self.pool)) for _ in range(n)]
        rows = []
        while len(rows) < n:
            row = self.task.draw(rng)
            if row["prompt"] not in self.held_out_prompts:
                rows.append(row)
        return rows

    def evaluation(self, spec: str, n: int) -> list[Row]:
        """Evaluation rows: `spec` (a JSONL file or task:NAME), else the task's held-out prompts."""
        if spec:
            source = TextPrompts(spec, 0)
            return source.task.held_out(n) if source.task is not None else source.pool[:n]
        if self.task is None:
            raise ValueError(f"prompts={self.spec!r} has no held-out split: set eval_prompts to a JSONL file")
        return self.task.held_out(n)
