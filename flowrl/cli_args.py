"""What the `flowrl` command and the scripts beside it (benchmarks/) read from their arguments:
argparse value types and recipe names. Kept out of flowrl.cli so that no library module imports
the command line."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def non_negative_float(text: str) -> float:
    """argparse type of a finite number >= 0 (noise levels); shared with the benchmark scripts."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of an integer of at least 0 (step counts); shared with the benchmark scripts."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 0, got {text}")
    return value


def resolve_recipe(name: str | None) -> Path | None:
    """A recipe path: an existing file, or the name of a shipped recipe (flowrl/recipes/NAME.yaml)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    recipes = Path(__file__).resolve().parent / "recipes"
    known = sorted(p.stem for p in recipes.glob("*.yaml"))
    if "/" in name or os.sep in name or path.suffix in (".yaml", ".yml"):
        raise ValueError(f"recipe file {name!r} does not exist (shipped recipes, by name: {known})")
    shipped = recipes / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ValueError(f"recipe {name!r} is neither a file nor a shipped recipe; shipped: {known}")
