"""Synthetic verifiable arithmetic tasks for the CPU default: prompts like "123*45=" whose answer is
the result's digits, zero-padded and reversed (the order a left-to-right model can compute).

Train and held-out prompts are disjoint by construction (held-out ones are drawn first, with a fixed
seed, and excluded from training), so held-out accuracy measures a skill, not memory.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TASK_PATTERN = re.compile(r"^(add|mul)(\d)x(\d)$")
HELD_OUT = 1000  # held-out prompts of a task (a quarter of a smaller task's prompts)
HELD_OUT_SEED = 12345


@dataclass(frozen=True)
class ArithmeticTask:
    """`add3x3`: a 3-digit plus a 3-digit number; `mul3x2`: a 3-digit times a 2-digit number."""

    name: str

    def __post_init__(self) -> None:
        if not TASK_PATTERN.match(self.name):
            raise ValueError(f"unknown arithmetic task {self.name!r}; expected addAxB or mulAxB, e.g. mul3x2")

    @property
    def operator(self) -> str:
        return "+" if self.name.startswith("add") else "*"

    @property
    def digits(self) -> tuple[int, int]:
        match = TASK_PATTERN.match(self.name)
        return int(match.group(2)), int(match.group(3))

    @property
    def answer_length(self) -> int:
        a, b = self.digits
        return a + b if self.operator == "*" else max(a, b) + 1

    def answer(self, x: int, y: int) -> str:
        value = x * y if self.operator == "*" else x + y
        return str(value).zfill(self.answer_length)[::-1]

    def draw(self, rng: random.Random) -> dict[str, str]:
        a, b = self.digits
        x, y = rng.randint(10 ** (a - 1), 10**a - 1), rng.randint(10 ** (b - 1), 10**b - 1)
        return {"prompt": f"{x}{self.operator}{y}=", "answer": self.answer(x, y)}

    def held_out(self, n: int | None = None) -> list[dict[str, str]]:
        """The first `n` (at most the held-out set's size) distinct prompts of the fixed held-out stream."""
        size = min(HELD_OUT, self.space() // 4)
        return distinct(self.draw, random.Random(HELD_OUT_SEED), size if n is None else min(n, size), set())

    def train(self, n: int, seed: int = 0, teacher_error: float = 0.0) -> list[dict[str, str]]:
        """`n` distinct training rows, none of them held out. With `teacher_error` p (additions only),
        an imperfect teacher labels them: where the units column carries, it drops that carry with
        probability p (writes x + y - 10), a systematic mistake that supervised training copies."""
        excluded = {row["prompt"] for row in self.held_out()}
        rows = distinct(self.draw, random.Random(1_000 + seed), n, excluded)
        if teacher_error:
            if self.operator != "+" or not 0 <= teacher_error <= 1:
                raise ValueError(
                    f"teacher_error is a probability for addition tasks, got {teacher_error!r} for {self.name}"
                )
            rng = random.Random(2_000 + seed)
            for row in rows:
                x, y = (int(v) for v in row["prompt"][:-1].split("+"))
                if x % 10 + y % 10 >= 10 and rng.random() < teacher_error:
                    row["answer"] = str(x + y - 10).zfill(self.answer_length)[::-1]
        return rows

    def space(self) -> int:
        """How many distinct prompts the task has."""
        a, b = self.digits
        return 9 * 10 ** (a - 1) * 9 * 10 ** (b - 1)


def distinct(draw, rng: random.Random, n: int, excluded: set[str]) -> list[dict[str, str]]:
    rows, seen = [], set(excluded)
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            return rows
        row = draw(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    raise ValueError(f"the task has too few distinct prompts for {n} rows")
