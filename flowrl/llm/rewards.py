"""Text rewards with TRL's signature: f(prompts, completions, **columns) -> list[float | None]
(None: no reward for that completion). Built-ins check exact answers, a format and the length;
a user's function registers with `@register_text_reward("name")` or is named as "module:function"."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import random
import re
from collections.abc import Callable
from typing import Any

from flowrl.registry import Registry

TEXT_REWARDS = Registry("text reward")
register_text_reward = TEXT_REWARDS.register

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def last_number(text: str) -> str | None:
    """The last number in the text (GSM8K-style answers), or None."""
    found = NUMBER.findall(text)
    return found[-1] if found else None


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, or None."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


EXTRACTORS = {"whole": lambda text: text.strip(), "last_number": last_number, "boxed": boxed}


@register_text_reward("exact_match", description="1 when the extracted answer equals the `answer` column, else 0")
def exact_match(prompts: list[str], completions: list[str], answer: list[str], extract: str = "whole", **_) -> list:
    if extract not in EXTRACTORS:
        raise ValueError(f"extract={extract!r}: expected one of {list(EXTRACTORS)}")
    pick = EXTRACTORS[extract]
    return [float(pick(c) is not None and pick(c) == str(a).strip()) for c, a in zip(completions, answer)]


@register_text_reward("format", description="1 when the completion matches `pattern` (a regex, whole text)")
def format_reward(prompts: list[str], completions: list[str], pattern: str = r"\d+", **_) -> list:
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]


@register_text_reward("length", description="-(characters beyond `target`) / `target`: a penalty on long answers")
def length_reward(prompts: list[str], completions: list[str], target: int = 100, **_) -> list:
    if target <= 0:
        raise ValueError(f"target must be positive, got {target!r}")
    return [-max(0, len(c) - target) / target for c in completions]


@register_text_reward(
    "overlong", description="DAPO's soft overlong penalty: 0, then linear to -1 over the last `cache` tokens, -1 beyond"
)
def overlong_penalty(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], max_length: int, cache: int, **_
) -> list:
    """0 up to max_length - cache tokens, ((max_length - cache) - n) / cache up to max_length, -1 past it."""
    if not 0 < cache <= max_length:
        raise ValueError(f"need 0 < cache <= max_length, got cache={cache!r}, max_length={max_length!r}")
    values = []
    for ids in completion_ids:
        n = len(ids)
        values.append(0.0 if n <= max_length - cache else -1.0 if n > max_length else (max_length - cache - n) / cache)
    return values


def resolve(name: str) -> Callable:
    """A registered text reward, or "module:function" imported (the module must be importable)."""
    if name in TEXT_REWARDS:
        return TEXT_REWARDS.lookup(name)
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"reward={name!r}: cannot import {attribute!r} from {module!r} ({error})") from None
    raise ValueError(f"unknown text reward {name!r}; known: {sorted(TEXT_REWARDS)} (or module:function)")


class TextRewardSet:
    """Weighted text rewards (`reward: exact_match` or `{exact_match: 1.0, format: 0.1}`)."""

    def __init__(self, spec: str | dict, options: dict | None = None) -> None:
        weights = {spec: 1.0} if isinstance(spec, str) else dict(spec)
        # "shuffled:NAME" is a control: NAME's values permuted among the batch's completions (no signal)
        self.shuffled = {name for name in weights if name.startswith("shuffled:")}
        self.functions = {name: resolve(name.removeprefix("shuffled:")) for name in weights}
        self.weights = {name: float(w) for name, w in weights.items()}
        self.options = options or {}

    def unshuffled(self) -> TextRewardSet:
        """The same rewards without the shuffled controls (what evaluation judges with)."""
        plain = {name.removeprefix("shuffled:"): weight for name, weight in self.weights.items()}
        options = {name.removeprefix("shuffled:"): value for name, value in self.options.items()}
        return TextRewardSet(plain, options)

    def __call__(
        self, rows: list[dict], completions: list[str], completion_ids: list[list[int]] | None = None, seed: int = 0
    ) -> tuple[list[float], dict[str, float]]:
        """(weighted reward per completion, NaN where a function returned None; mean per reward)."""
        prompts = [row["prompt"] for row in rows]
        columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"} if rows else {}
        if completion_ids is not None:
            columns["completion_ids"] = completion_ids
        total = [0.0] * len(completions)
        means = {}
        for name, function in self.functions.items():
            values = call(function, prompts, completions, {**columns, **self.options.get(name, {})})
            if len(values) != len(completions):
                raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
            scored = [math.nan if v is None else float(v) for v in values]
            if name in self.shuffled:
                random.Random(seed).shuffle(scored)
            total = [t + self.weights[name] * v for t, v in zip(total, scored)]
            finite = [v for v in scored if not math.isnan(v)]
            means[f"reward/{name}/mean"] = sum(finite) / len(finite) if finite else math.nan
        return total, means


def call(function: Callable, prompts: list[str], completions: list[str], columns: dict[str, Any]) -> list:
    """Call a reward function, awaiting it when it is a coroutine function."""
    result = function(prompts=prompts, completions=completions, **columns)
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        result = asyncio.run(wait())
    return list(result)
