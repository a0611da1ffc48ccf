"""Where training prompts come from: ToyShapes splits (category-balanced) or a text file."""

from __future__ import annotations

import random
from pathlib import Path


def toyshapes_prompt_spec(spec: str) -> tuple[str, tuple[str, ...] | None]:
    """The split and categories (None: all) of a `prompts=toyshapes:SPLIT[:CATEGORY,...]` value;
    fails naming the bad part and what is allowed."""
    from flowrl.benchmarks.toyshapes.prompts import CATEGORIES

    _, split, *rest = spec.split(":", 2)
    if split not in ("train", "heldout", "all"):
        raise ValueError(
            f"config key prompts={spec!r}: unknown split {split!r}; expected toyshapes:train, toyshapes:heldout or toyshapes:all"
        )
    if not rest:
        return split, None
    categories = tuple(c.strip() for c in rest[0].split(","))
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(
            f"config key prompts={spec!r}: unknown categories {unknown}; expected a comma-separated list of {list(CATEGORIES)}"
        )
    return split, tuple(dict.fromkeys(categories))


class PromptSource:
    """Prompts per iteration as a function of (seed, iteration, rank): resuming needs no data state.

    ToyShapes prompts are drawn category-balanced (a category uniformly, then a prompt in it), as
    the evaluation weighs categories equally; uniform over prompts would be dominated by the
    combinatorially large categories (color attribution, position). `toyshapes:SPLIT:CATEGORY,...`
    draws among those categories only. Text files: uniform over lines.
    """

    def __init__(self, spec: str, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self.toyshapes_split, self.toyshapes_categories = None, None
        if spec.startswith("toyshapes:"):
            from flowrl.benchmarks.toyshapes.prompts import prompts_for

            self.toyshapes_split, self.toyshapes_categories = toyshapes_prompt_spec(spec)
            self.pool = [p.text for p in prompts_for(self.toyshapes_split, self.toyshapes_categories)]
        else:
            self.pool = read_prompt_file(spec)
        if not self.pool:
            raise ValueError(f"prompts={spec!r} yields no prompts")

    def batch(self, iteration: int, n: int) -> list[str]:
        """The iteration's global prompt list (the same on every process; each runs a shard)."""
        if self.toyshapes_split is not None:
            from flowrl.benchmarks.toyshapes.prompts import sample_prompts

            seed = hash((self.seed, iteration)) & 0x7FFFFFFF
            return [
                p.text for p in sample_prompts(n, self.toyshapes_split, seed=seed, categories=self.toyshapes_categories)
            ]
        rng = random.Random(f"{self.seed}/{iteration}")
        return [rng.choice(self.pool) for _ in range(n)]


def read_prompt_file(path: str) -> list[str]:
    """The non-empty lines of a prompt file, stripped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
