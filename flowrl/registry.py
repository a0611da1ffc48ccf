"""Name-to-object registries (advantage estimators, policy losses): duplicates and misses fail
with messages that name the kind and list the known names."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A dict of named objects of one kind, filled by the `register(name)` decorator."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self[name] = obj
            return obj

        return add

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]
