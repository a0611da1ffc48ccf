"""ToyShapes report files (results.json, .md, .csv, report.html with a grid per category) and
comparisons of two saved reports, built on the shared machinery in benchmarks/report.py."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import torch

from ..paired import PairedDifference, mean_of_groups, mean_of_score_groups, paired_difference, paired_mean_difference
from ..report import (
    Entry,
    ImageRecord,
    Judgment,
    Row,
    Table,
    compare_tables,
    image_src,
    write_csv,
    write_html,
    write_markdown,
)
from .breakdown import breakdown, has_stages
from .evaluate import EvalReport
from .prompts import CATEGORIES

TITLE = "ToyShapes"


def _category_counts(report: EvalReport) -> dict[str, tuple[int, int]]:
    """(correct, total) per category from the per-image records."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in report.records:
        counts[record["category"]][0] += int(bool(record["correct"]))
        counts[record["category"]][1] += 1
    return {c: (n, t) for c, (n, t) in counts.items()}


def _ordered(categories) -> list[str]:
    """Known categories in the benchmark's order, then any others alphabetically."""
    known = [c for c in CATEGORIES if c in categories]
    return known + sorted(set(categories) - set(known))


def toyshapes_tables(report: EvalReport) -> list[Table]:
    """Summary (Overall = mean over categories, as GenEval; and all images pooled), then per category.
    Counts come from the records; a report saved without records shows accuracies only."""
    counts = _category_counts(report)
    rows = tuple(Row(c, *counts.get(c, (None, None)), report.accuracy[c]) for c in _ordered(report.accuracy))
    correct = sum(n for n, _ in counts.values())
    pooled = Row("All images", correct, len(report.records), correct / len(report.records)) if report.records else None
    summary = (Row("Overall", None, None, report.overall),) + ((pooled,) if pooled else ())
    return [Table("Summary", summary), Table("Categories", rows), *stage_tables(report)]


# Titles of the failure-stage tables (breakdown.STAGES but "correct", which Categories holds).
STAGE_TITLES = {
    "too_few": "Too few objects",
    "right_count": "Right count",
    "too_many": "Too many objects",
    "right_shapes": "Right shapes (exact count, colours aside)",
    "copied": "One asked shape in place of another, of the images asking for different shapes",
    "right_objects": "Right objects (shapes and colours)",
    "relation": "Right relation, of the images with the right objects",
}


def stage_tables(report: EvalReport) -> list[Table]:
    """One table per failure stage (breakdown.py), a row per category that the stage counts;
    none for a report whose records predate the stages."""
    if not has_stages(report.records):
        return []
    stages = breakdown(report.records)
    return [
        Table(title, tuple(Row(c, k, n, k / n) for c, row in stages.items() for k, n in [row[stage]] if n))
        for stage, title in STAGE_TITLES.items()
    ]


def load_report(path: str | Path) -> EvalReport:
    """Read a report written by EvalReport.save."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("accuracy", "overall", "mean_score", "num_images") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a ToyShapes report, missing {missing}; has keys {sorted(data)}")
    return EvalReport(**data)


def save_images(images: torch.Tensor, folder: str | Path) -> list[Path]:
    """Write images [B, 3, H, W] in [0, 1] as folder/0000.png, 0001.png, ... (8-bit PNG)."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    paths = []
    for i, array in enumerate(arrays):
        path = folder / f"{i:04d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def _entries(report: EvalReport, srcs: list[str]) -> list[Entry]:
    """One card per category: its images, each judged by the verifier on its prompt."""
    by_category: dict[str, list[ImageRecord]] = defaultdict(list)
    for i, record in enumerate(report.records):
        judgment = Judgment(record["prompt"], bool(record["correct"]), f"score {record['score']:.3f}")
        by_category[record["category"]].append(ImageRecord(srcs[i] if srcs else "", f"#{i}", (judgment,)))
    counts = _category_counts(report)
    return [
        Entry(
            key=c,
            title=c,
            subtitle=f"{counts[c][0]} of {counts[c][1]} correct",
            tags=(c,),
            images=tuple(by_category[c]),
        )
        for c in _ordered(by_category)
    ]


def write_toyshapes_reports(
    report: EvalReport, out_dir: str | Path, images: torch.Tensor | None = None
) -> dict[str, Path]:
    """Write results.json, results.md, results.csv and report.html into out_dir; with images
    (aligned with report.records) also images/NNNN.png, shown per category in the HTML."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    srcs: list[str] = []
    if images is not None:
        if len(images) != len(report.records):
            raise ValueError(f"expected one image per record ({len(report.records)}), got {len(images)} images")
        srcs = [image_src(p, out_dir) for p in save_images(images, out_dir / "images")]
    tables = toyshapes_tables(report)
    notes = [
        f"Overall = mean of the per-category accuracies (GenEval); mean verifier score {report.mean_score:.3f}.",
        f"{report.num_images} images.",
    ]
    meta = {k: str(v) for k, v in report.settings.items()}
    return {
        "json": report.save(out_dir / "results.json"),
        "markdown": write_markdown(out_dir / "results.md", TITLE, tables, notes),
        "csv": write_csv(out_dir / "results.csv", tables),
        "html": write_html(
            out_dir / "report.html", TITLE, tables, _entries(report, srcs), meta, notes, thumb_px=96, pixelated=True
        ),
    }


# Settings that make two evaluations judge the same (prompt, starting noise) pairs: of a split's
# evaluation, and of an evaluation of chosen prompts.
_SAME_NOISE = ("images_per_category", "seed", "split")
_SAME_NOISE_PROMPTS = ("images_per_prompt", "seed", "prompts")


def _unpaired_reason(a: EvalReport, b: EvalReport) -> str | None:
    """Why image i of one report cannot be paired with image i of the other, or None if it can."""
    if not a.records or not b.records:
        return "a report was saved without its per-image records"
    prompts_a, prompts_b = [r["prompt"] for r in a.records], [r["prompt"] for r in b.records]
    if prompts_a == prompts_b:
        return None
    if len(prompts_a) != len(prompts_b):
        why = f"{len(prompts_a)} and {len(prompts_b)} images"
    else:
        first = next(i for i, (x, y) in enumerate(zip(prompts_a, prompts_b)) if x != y)
        why = f"image {first} is {prompts_a[first]!r} in A and {prompts_b[first]!r} in B"
    return f"the reports judged different images ({why}); evaluate both with the same settings"


def _by_category(a: EvalReport, b: EvalReport, field: str) -> dict[str, tuple[list, list]]:
    """{category: (A's values, B's values)} of one per-image field, in the reports' order."""
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for record_a, record_b in zip(a.records, b.records):
        groups[record_a["category"]][0].append(record_a[field])
        groups[record_a["category"]][1].append(record_b[field])
    return {c: groups[c] for c in _ordered(groups)}


def _shared(a: EvalReport, b: EvalReport) -> str:
    keys = _SAME_NOISE_PROMPTS if "prompts" in a.settings else _SAME_NOISE
    same_noise = all(k in a.settings and a.settings.get(k) == b.settings.get(k) for k in keys)
    return (
        "the same prompts and starting noise"
        if same_noise
        else "the same prompts (starting noise not known to be shared)"
    )


def paired_toyshapes(a: EvalReport, b: EvalReport) -> tuple[tuple[PairedDifference, ...], str]:
    """Per-category paired tests of B - A and the overall (mean over categories), with a note
    saying what was paired; no tests, and the note says why, when the records do not line up.

    Image i of one report is paired with image i of the other when both have the same prompt;
    with the same evaluation settings they also share the starting noise, which is what makes
    a paired difference less noisy than two independent accuracies."""
    reason = _unpaired_reason(a, b)
    if reason is not None:
        return (), f"No paired test: {reason}."
    groups = _by_category(a, b, "correct")
    parts = [paired_difference(c, [bool(x) for x in xs], [bool(y) for y in ys]) for c, (xs, ys) in groups.items()]
    note = (
        f"Image by image on {_shared(a, b)}. p: exact McNemar test of no difference per category; "
        "Overall is the mean over categories (with equal category sizes, McNemar on all images; "
        "otherwise a normal approximation). Intervals: 95%, Agresti-Min's for paired proportions."
    )
    return (*parts, mean_of_groups("Overall", parts)), note


def paired_toyshapes_scores(a: EvalReport, b: EvalReport) -> tuple[tuple[PairedDifference, ...], str]:
    """The same pairing for the dense score (the reward RL trains on): per-category mean
    differences with Student's t intervals and paired t-tests, and the overall mean over
    categories; no tests, with the reason, when the records do not line up or lack scores."""
    reason = _unpaired_reason(a, b)
    if reason is None and not all("score" in r for r in (*a.records, *b.records)):
        reason = "a report's records have no dense score"
    groups = _by_category(a, b, "score") if reason is None else {}
    if reason is None and min(len(xs) for xs, _ in groups.values()) < 2:
        reason = "a category has fewer than 2 images"
    if reason is not None:
        return (), f"No paired score: {reason}."
    parts = [paired_mean_difference(c, xs, ys) for c, (xs, ys) in groups.items()]
    note = (
        f"Mean dense score (0 to 1, partial credit), image by image on {_shared(a, b)}. p: paired t-test "
        "per category; Overall is the mean over categories (normal approximation). Intervals: 95%."
    )
    return (*parts, mean_of_score_groups("Overall", list(groups.values()))), note


def compare_toyshapes(path_a: str | Path, path_b: str | Path, out_dir: str | Path | None = None) -> str:
    """Markdown comparing two saved ToyShapes reports per category (differences are B - A), with
    paired tests of accuracy and dense score when both judged the same images; with out_dir,
    also writes comparison.md, comparison.csv, comparison.html (and comparison_paired.csv,
    comparison_paired_score.csv) there."""
    path_a, path_b = Path(path_a), Path(path_b)
    label_a, label_b = str(path_a), str(path_b)
    report_a, report_b = load_report(path_a), load_report(path_b)
    comparison = compare_tables(toyshapes_tables(report_a), toyshapes_tables(report_b), label_a, label_b)
    paired, note = paired_toyshapes(report_a, report_b)
    scores, scores_note = paired_toyshapes_scores(report_a, report_b)
    comparison = dataclasses.replace(
        comparison, paired=paired, paired_note=note, paired_scores=scores, paired_scores_note=scores_note
    )
    if out_dir is not None:
        comparison.write(out_dir)
    return comparison.markdown()
