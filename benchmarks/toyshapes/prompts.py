"""ToyShapes prompts: a closed, GenEval-style compositional vocabulary and its fixed splits.

Every prompt of the world is enumerated once, so a prompt string parses back to its exact
specification and the train / held-out split is a fixed property of the string.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from functools import lru_cache

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "purple")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
SPLITS: tuple[str, ...] = ("train", "heldout")
# Share of a category's prompts held out, for categories with enough distinct prompts.
HELDOUT_FRACTION = 0.25
MIN_PROMPTS_TO_SPLIT = 8


@dataclass(frozen=True)
class ObjectSpec:
    """One required object: its shape and, when the prompt names one, its colour."""

    shape: str
    color: str | None = None


@dataclass(frozen=True)
class Prompt:
    """A prompt with the exact scene it asks for.

    `relation`, when set, relates objects[0] (the subject) to objects[1] (the reference).
    """

    text: str
    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _enumerate_prompts() -> list[Prompt]:
    prompts: list[Prompt] = []
    for shape in SHAPES:
        prompts.append(Prompt(f"a {shape}", "single_object", (ObjectSpec(shape),)))
    for a, b in itertools.permutations(SHAPES, 2):
        prompts.append(Prompt(f"a {a} and a {b}", "two_object", (ObjectSpec(a), ObjectSpec(b))))
    for n, shape in itertools.product(NUMBER_WORDS, SHAPES):
        prompts.append(Prompt(f"{NUMBER_WORDS[n]} {_plural(shape, n)}", "counting", (ObjectSpec(shape),) * n))
    for color, shape in itertools.product(COLORS, SHAPES):
        prompts.append(Prompt(f"a {color} {shape}", "colors", (ObjectSpec(shape, color),)))
    for (a, b), rel in itertools.product(itertools.permutations(SHAPES, 2), RELATIONS):
        prompts.append(Prompt(f"a {a} {rel} a {b}", "position", (ObjectSpec(a), ObjectSpec(b)), rel))
    for (a, b), (ca, cb) in itertools.product(itertools.permutations(SHAPES, 2), itertools.permutations(COLORS, 2)):
        prompts.append(
            Prompt(
                f"a {ca} {a} and a {cb} {b}",
                "color_attr",
                (ObjectSpec(a, ca), ObjectSpec(b, cb)),
            )
        )
    return prompts


@lru_cache(maxsize=1)
def all_prompts() -> tuple[Prompt, ...]:
    """Every prompt of the world, in a fixed order."""
    return tuple(_enumerate_prompts())


@lru_cache(maxsize=1)
def _by_text() -> dict[str, Prompt]:
    return {p.text: p for p in all_prompts()}


def vocabulary() -> tuple[str, ...]:
    """Every word any prompt uses, sorted: the toy text encoder's vocabulary."""
    return tuple(sorted({w for p in all_prompts() for w in p.text.split()}))


def parse_prompt(text: str) -> Prompt:
    """Return the specification of a ToyShapes prompt; unknown text fails naming the grammar."""
    key = " ".join(text.strip().lower().split())
    prompt = _by_text().get(key)
    if prompt is None:
        raise ValueError(
            f"{text!r} is not a ToyShapes prompt. Prompts follow one of: 'a circle', "
            "'a circle and a square', 'three triangles', 'a red square', "
            "'a circle left of a square' (left of / right of / above / below), "
            f"'a red circle and a blue square'; shapes {list(SHAPES)}, colours {list(COLORS)}, "
            "counts one to four."
        )
    return prompt


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


@lru_cache(maxsize=1)
def _splits() -> dict[str, str]:
    """Per category, the HELDOUT_FRACTION of prompts with the smallest text hash are held out."""
    result = {}
    for category in CATEGORIES:
        members = sorted((p.text for p in all_prompts() if p.category == category), key=_hash)
        if len(members) < MIN_PROMPTS_TO_SPLIT:
            result.update({text: "both" for text in members})
            continue
        n_heldout = math.ceil(HELDOUT_FRACTION * len(members))
        result.update({text: "heldout" if i < n_heldout else "train" for i, text in enumerate(members)})
    return result


def split_of(text: str) -> str:
    """The fixed split of a prompt: 'train', 'heldout', or 'both'.

    Categories with fewer than MIN_PROMPTS_TO_SPLIT prompts (single_object, two_object) are too
    small to split; their prompts belong to both splits.
    """
    return _splits()[parse_prompt(text).text]


def prompts_for(split: str, categories: tuple[str, ...] | None = None) -> list[Prompt]:
    """The prompts of a split ('train', 'heldout' or 'all'), optionally of some categories."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {[*SPLITS, 'all']}, got {split!r}")
    categories = categories or CATEGORIES
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
    return [
        p for p in all_prompts() if p.category in categories and (split == "all" or split_of(p.text) in (split, "both"))
    ]


def sample_prompts(
    n: int, split: str = "train", seed: int = 0, categories: tuple[str, ...] | None = None
) -> list[Prompt]:
    """n prompts drawn deterministically: a category uniformly (of `categories`, default all),
    then a prompt within it."""
    categories = tuple(categories or CATEGORIES)
    rng = random.Random(seed)
    pool = {c: prompts_for(split, (c,)) for c in categories}
    return [rng.choice(pool[rng.choice(categories)]) for _ in range(n)]


def eval_prompts(images_per_category: int = 32, split: str = "heldout") -> list[Prompt]:
    """The fixed, category-balanced evaluation list: each category's prompts of `split` (held-out
    by default; "train" tells a gain on the RL prompts from one that generalises) in a fixed
    order, repeated until the category has `images_per_category` entries."""
    if split not in SPLITS:
        raise ValueError(f"the evaluation split must be one of {list(SPLITS)}, got {split!r}")
    chosen: list[Prompt] = []
    for category in CATEGORIES:
        pool = sorted(prompts_for(split, (category,)), key=lambda p: _hash(p.text))
        chosen.extend(pool[i % len(pool)] for i in range(images_per_category))
    return chosen
