"""The method registry and the objects methods hand to the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..plan import Plan


@dataclass
class Credit:
    """Rewards turned into per-transition learning signal, aligned with rollout.transitions.

    advantages: [M]; mask: [M] bool, the transitions that get gradients (trained and not pruned);
    weight: [M] per-transition loss weight; stats: scalars to log.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A named method: its config class, plan generator and credit rule."""

    name: str
    description: str
    paper: str
    config: type
    make_plan: Callable[[Any, int], Plan]
    credit: Callable[..., Credit]

    def configure(self, **overrides: Any) -> Any:
        """The method's config with overrides; unknown keys fail listing the known ones."""
        known = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{self.name} has no option(s) {unknown}; known options: {sorted(known)}")
        return self.config(**overrides)

    def plan(self, config: Any = None, iteration: int = 0) -> Plan:
        """The plan for training iteration `iteration` (plans may move with it, e.g. MixGRPO)."""
        return self.make_plan(self.config() if config is None else config, iteration)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method by name; a duplicate name is an error."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method `name`, or a ValueError listing the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {list(METHODS)}")
    return METHODS[name]
