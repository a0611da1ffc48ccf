"""The policy-loss registry: users add surrogate objectives by name."""

from __future__ import annotations

from typing import Callable

LOSSES: dict[str, Callable] = {}


def register_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(log_ratio, advantages, **options) -> (per-element loss, clipped mask)`."""

    def add(fn: Callable) -> Callable:
        if name in LOSSES:
            raise ValueError(f"a policy loss named {name!r} is already registered")
        LOSSES[name] = fn
        return fn

    return add


def get_loss(name: str) -> Callable:
    """The surrogate registered as `name`, or a ValueError listing the known names."""
    if name not in LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]
