"""Where ToyShapes images fail: per category, how many have the right count, the right shapes,
the right colours and, given those, the right relation.

Accuracy alone does not say whether a model that misses "a circle left of a square" drew one
object, two circles, or the right two in the wrong order; each calls for a different fix. The
stages nest: right objects imply right shapes imply the right count. Beside them, for prompts
that ask for different shapes, "copied" marks the images that draw one asked shape in place of
another (two circles for "a circle and a square"), the commonest miss of a small model.
"""

from __future__ import annotations

from collections import Counter

from .prompts import CATEGORIES, Prompt, parse_prompt
from .scene import Assessment, SceneObject

# Record fields this module adds to an evaluation's per-image records.
FIELDS = ("found", "shapes_ok", "objects_ok", "relation_ok", "copied")


def diagnose(objects: list[SceneObject], prompt: Prompt, assessment: Assessment) -> dict:
    """The stages one image passes: objects found, right shapes (exact count, the required shapes
    whatever their colours), right objects (shapes and colours), the relation (None if unasked),
    and copied: the exact count and only asked shapes, yet an asked shape missing (None where the
    prompt asks for one shape only)."""
    count_ok = len(objects) == len(prompt.objects)
    asked = Counter(s.shape for s in prompt.objects)
    drawn = Counter(o.shape for o in objects)
    shapes_ok = count_ok and drawn == asked
    objects_ok = count_ok and assessment.match_term == 1.0
    relation_ok = None if assessment.relation_term is None else assessment.relation_term == 1.0
    copied = None if len(asked) < 2 else count_ok and not shapes_ok and set(drawn) <= set(asked)
    return {
        "found": len(objects),
        "shapes_ok": shapes_ok,
        "objects_ok": objects_ok,
        "relation_ok": relation_ok,
        "copied": copied,
    }


def has_stages(records: list[dict]) -> bool:
    """Whether per-image records carry the stages (reports saved before them do not)."""
    return bool(records) and all(field in records[0] for field in FIELDS)


# The stages in table order, with their labels; every stage counts over the category's images
# but "relation", which counts over the images with the right objects whose prompt asks one, and
# "copied", which counts over the images whose prompt asks for different shapes.
STAGES = {
    "too_few": "too few",
    "right_count": "count",
    "too_many": "too many",
    "right_shapes": "shapes",
    "copied": "shape twice",
    "right_objects": "objects",
    "relation": "relation|obj",
    "correct": "correct",
}


def breakdown(records: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per category (benchmark order), (images passing, images counted) for each of STAGES; the
    relation's count is (0, 0) where no prompt asks one or no image has its objects right, and
    copied's where no prompt asks for different shapes.

    Raises ValueError when the records lack the fields (a report saved before they existed)."""
    if records and not has_stages(records):
        raise ValueError(f"these records lack the failure stages {list(FIELDS)}: re-run the evaluation to get them")
    by_category: dict[str, list[dict]] = {}
    for record in records:
        by_category.setdefault(record["category"], []).append(record)
    rows = {}
    for category in [c for c in CATEGORIES if c in by_category] + sorted(set(by_category) - set(CATEGORIES)):
        group = by_category[category]
        n = len(group)
        need = [len(parse_prompt(r["prompt"]).objects) for r in group]
        asked = [r for r in group if r["relation_ok"] is not None and r["objects_ok"]]
        different = [r for r in group if r["copied"] is not None]
        rows[category] = {
            "too_few": (sum(r["found"] < k for r, k in zip(group, need)), n),
            "right_count": (sum(r["found"] == k for r, k in zip(group, need)), n),
            "too_many": (sum(r["found"] > k for r, k in zip(group, need)), n),
            "right_shapes": (sum(bool(r["shapes_ok"]) for r in group), n),
            "copied": (sum(bool(r["copied"]) for r in different), len(different)),
            "right_objects": (sum(bool(r["objects_ok"]) for r in group), n),
            "relation": (sum(bool(r["relation_ok"]) for r in asked), len(asked)),
            "correct": (sum(bool(r["correct"]) for r in group), n),
        }
    return rows


def breakdown_table(records: list[dict]) -> str:
    """A fixed-width table of `breakdown`, in percent ('-' where a stage counts no image)."""
    lines = [f"{'category':<15}" + "".join(f"{label:>13}" for label in STAGES.values()) + f"{'images':>8}"]
    for category, row in breakdown(records).items():
        cells = "".join(f"{'-':>13}" if n == 0 else f"{100 * k / n:>12.1f}%" for k, n in row.values())
        lines.append(f"{category:<15}{cells}{row['correct'][1]:>8}")
    return "\n".join(lines)
