"""The advantage-estimator registry: users add their own by name."""

from __future__ import annotations

from typing import Callable, Protocol

import torch


class AdvantageFn(Protocol):
    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor, **options) -> torch.Tensor: ...


ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register `fn(rewards [N], group_ids [N], **options) -> advantages [N]` as `name`."""

    def add(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"an advantage estimator named {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return add


def get_advantage(name: str) -> AdvantageFn:
    """The estimator registered as `name`, or a ValueError listing the known names."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]
