"""The method registry: a method is a plan generator plus the name of its credit rule.

The credit rules themselves (how rewards become per-transition advantages) live with the
advantage estimators in flowrl.advantage.credit; a method only says which rule it uses and with
which options, so the solver layer needs nothing from above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowrl.registry import Registry, build_options

from ..plan import Plan


def no_credit_options(config: Any, iteration: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """A named method: its options dataclass, plan generator and credit rule (`chain`, `tree` or
    `probe`, with the options `credit_options(config, iteration)` gives)."""

    name: str
    description: str
    paper: str
    config: type
    make_plan: Callable[[Any, int], Plan]
    credit_rule: str
    credit_options: Callable[[Any, int], dict[str, Any]] = no_credit_options

    def configure(self, **overrides: Any) -> Any:
        """The method's config with overrides; unknown keys fail listing the known ones."""
        return build_options(self.config, overrides, self.name)

    def plan(self, config: Any = None, iteration: int = 0) -> Plan:
        """The plan for training iteration `iteration` (plans may move with it, e.g. MixGRPO)."""
        return self.make_plan(self.config() if config is None else config, iteration)


METHODS = Registry("method")


def register_method(method: Method) -> Method:
    """Add a method by name; a duplicate name is an error."""
    return METHODS.register(method.name, options=method.config, description=method.description)(method)


def get_method(name: str) -> Method:
    """The registered method `name`, or a ValueError listing the known names."""
    return METHODS.lookup(name)
