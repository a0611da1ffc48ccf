"""Scenes as lists of objects, and the one rule that decides whether a scene satisfies a prompt.

The renderer's ground-truth scenes and the verifier's detections are both lists of
`SceneObject`, and both are judged by `assess`, so the symbolic truth and the visual check
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .prompts import Prompt

# A relation holds when the centroids differ by more than this fraction of the image side
# along the relation's axis (GenEval judges position from box centres the same way).
RELATION_MARGIN = 0.08


@dataclass(frozen=True)
class SceneObject:
    """An object in an image: shape (None if unrecognised), colour, centroid in pixels, area."""

    shape: str | None
    color: str | None
    x: float
    y: float
    area: float = 0.0


@dataclass(frozen=True)
class Assessment:
    """How well a scene satisfies a prompt.

    correct: every requirement holds exactly (count, shapes, colours, relation).
    score: dense reward in [0, 1], the mean of the terms; equals 1 exactly when `correct`.
    count_term: 1 - |found - required| / required, at least 0.
    match_term: the best one-to-one assignment of found to required objects (half for the shape,
        half for the colour), less one per found object left over, over the number required.
    relation_term: 1 when some subject-reference pair satisfies the relation (None if unasked).
    """

    correct: bool
    score: float
    count_term: float
    match_term: float
    relation_term: float | None


def relation_holds(subject: SceneObject, reference: SceneObject, relation: str, size: int) -> bool:
    """Whether `subject` is `relation` `reference` (image y grows downwards)."""
    margin = RELATION_MARGIN * size
    dx, dy = subject.x - reference.x, subject.y - reference.y
    if relation == "left of":
        return dx < -margin
    if relation == "right of":
        return dx > margin
    if relation == "above":
        return dy < -margin
    if relation == "below":
        return dy > margin
    raise ValueError(f"unknown relation {relation!r}")


def _similarity(objects: list[SceneObject], prompt: Prompt) -> np.ndarray:
    """[n_required, n_found]: half for the right shape, half for the right (or unasked) colour."""
    sim = np.zeros((len(prompt.objects), len(objects)))
    for i, spec in enumerate(prompt.objects):
        for j, obj in enumerate(objects):
            shape_ok = float(obj.shape == spec.shape)
            color_ok = float(spec.color is None or obj.color == spec.color)
            sim[i, j] = 0.5 * (shape_ok + color_ok)
    return sim


def assess(objects: list[SceneObject], prompt: Prompt, size: int) -> Assessment:
    """Judge a list of objects against a prompt; see `Assessment` for the meaning of the fields."""
    n_req, n_found = len(prompt.objects), len(objects)
    count_term = max(0.0, 1.0 - abs(n_found - n_req) / n_req)
    match_term = 0.0
    if n_found:
        sim = _similarity(objects, prompt)
        rows, cols = linear_sum_assignment(-sim)
        # A found object left unassigned costs as much as a required object never found, so the
        # dense score does not pay for drawing too many objects.
        unassigned = n_found - len(cols)
        match_term = max(0.0, float(sim[rows, cols].sum()) - unassigned) / n_req
    relation_term = None
    if prompt.relation is not None:
        subject_spec, reference_spec = prompt.objects[0], prompt.objects[1]
        relation_term = 0.0
        for a in objects:
            for b in objects:
                if (
                    a is not b
                    and _matches(a, subject_spec)
                    and _matches(b, reference_spec)
                    and relation_holds(a, b, prompt.relation, size)
                ):
                    relation_term = 1.0
    terms = [count_term, match_term] + ([relation_term] if relation_term is not None else [])
    correct = all(t == 1.0 for t in terms)
    return Assessment(correct, float(np.mean(terms)), count_term, match_term, relation_term)


def _matches(obj: SceneObject, spec) -> bool:
    return obj.shape == spec.shape and (spec.color is None or obj.color == spec.color)
