"""ToyShapes: a GenEval-style compositional world with an exact verifier, small enough for a CPU."""

from .prompts import CATEGORIES, COLORS, RELATIONS, SHAPES, Prompt, parse_prompt, prompts_for, sample_prompts
from .render import render, render_batch
from .verify import detect_objects, scores, verify

__all__ = [
    "CATEGORIES",
    "COLORS",
    "RELATIONS",
    "SHAPES",
    "Prompt",
    "parse_prompt",
    "prompts_for",
    "sample_prompts",
    "render",
    "render_batch",
    "detect_objects",
    "scores",
    "verify",
]
