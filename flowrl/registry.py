"""The one registry pattern of the toolkit: named entries, each with an options dataclass.

Methods, advantage estimators, losses, objectives, rewards and policies are registered with the
`register(name, options=...)` decorator; a duplicate name fails, a lookup of an unknown name
lists the known ones, and `configure(name, values)` validates an entry's options (unknown keys,
bad values) before any model loads. This module imports nothing from the toolkit, so every
layer (the solver layer and the rewards too) may use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered object: its name, the object, its options dataclass (None: no options) and
    traits that callers check (e.g. stateful=True: the entry keeps state across iterations)."""

    name: str
    target: Any
    options: type | None
    description: str
    traits: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class NoOptions:
    """An entry without options."""


class Registry(dict):
    """A dict of named objects of one kind, filled by the `register(name)` decorator."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, options: type | None = None, description: str = "", **traits: Any
    ) -> Callable[[T], T]:
        """Decorator adding an object under `name` with its options dataclass (none: NoOptions)."""
        options = NoOptions if options is None else options
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"the options of {self.kind} {name!r} must be a dataclass, got {options!r}")

        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self[name] = obj
            doc = description or ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            self.entries[name] = Entry(name, obj, options, doc, dict(traits))
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's or a notebook's own registration) from the registry."""
        self.lookup(name)
        del self[name], self.entries[name]

    def lookup(self, name: str) -> Any:
        """The object registered as `name`, or a ValueError listing the known names."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]

    def entry(self, name: str) -> Entry:
        self.lookup(name)
        return self.entries[name]

    def configure(self, name: str, values: Mapping[str, Any] | None = None) -> Any:
        """The options dataclass of `name` built from `values`; unknown keys fail naming them and
        the known ones, and the dataclass's own checks run (no model is involved)."""
        return build_options(self.entry(name).options, values, f"{self.kind} {name!r}")


def option_names(options: type | None) -> list[str]:
    """The field names of an options dataclass (none for None)."""
    return [f.name for f in dataclasses.fields(options)] if options is not None else []


def build_options(options: type | None, values: Mapping[str, Any] | None, owner: str) -> Any:
    """`options(**values)`, with unknown keys and type errors reported as a ValueError naming `owner`."""
    values = dict(values or {})
    known = option_names(options)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{owner} has no option(s) {unknown}; known options: {known or 'none'}")
    if options is None:
        return None
    types = {
        f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        for f in dataclasses.fields(options)
    }
    for key, value in values.items():
        kind = types[key].removesuffix(" | None")
        optional = kind != types[key]
        if kind in ("int", "float") and not (optional and value is None):
            values[key] = number_option(value, kind == "int", f"{owner} option {key}")
    try:
        return options(**values)
    except TypeError as error:
        raise ValueError(f"{owner}: {error}") from None


def number_option(value: Any, integer: bool, what: str) -> int | float:
    """`value` as the int or float an option is typed for (YAML 1.1 reads 1e-4 as a string; 3.0
    is the integer 3); anything else is a ValueError naming `what`."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or (integer and not float(number).is_integer()):
        raise ValueError(f"{what}={value!r}: expected {'an integer' if integer else 'a number'}")
    return int(number) if integer else float(number)


def options_dict(options: Any) -> dict[str, Any]:
    """The keyword arguments an options dataclass stands for (an empty dict for None)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)} if options is not None else {}
