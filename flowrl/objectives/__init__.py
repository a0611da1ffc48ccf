"""Objectives: how advantages become a loss. One module per entry (sde, matching, nft, tokens, disco), each a
class with its options dataclass in the OBJECTIVES registry; a new objective is one new file
plus its registration."""

from .base import Objective, ObjectiveContext
from .registry import OBJECTIVES, get_objective, register_objective

# isort: off
from . import sde, matching, nft, tokens, disco  # noqa: F401,E402  (registration, in the order `flowrl objectives` lists them)
# isort: on

__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "get_objective", "register_objective"]
