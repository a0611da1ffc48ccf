"""UniGenBench report files (results.json, .md, .csv, report.html) and comparisons of two runs,
built on the shared machinery in benchmarks/report.py."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

from ..paired import PairedDifference, mean_of_groups, paired_difference
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
from .aggregate import Results, Tally, subtheme_key
from .interop import read_official_results
from .types import BenchPrompt, Verdict

TITLE = "UniGenBench"


def _rows(tallies: dict[str, Tally]) -> tuple[Row, ...]:
    return tuple(Row(name, t.correct, t.total, t.accuracy) for name, t in tallies.items())


def results_tables(results: Results) -> list[Table]:
    """Summary (Overall and the micro accuracy over all verdicts), then primary dimensions,
    sub-dimensions, themes and subthemes."""
    correct = sum(t.correct for t in results.primary_dimensions.values())
    total = sum(t.total for t in results.primary_dimensions.values())
    summary = (Row("Overall", None, None, results.overall), Row("All verdicts", correct, total, results.micro_accuracy))
    return [
        Table("Summary", summary),
        Table("Primary dimensions", _rows(results.primary_dimensions)),
        Table("Sub-dimensions", _rows(results.sub_dimensions)),
        Table("Themes", _rows(results.themes)),
        Table("Subthemes", _rows(results.subthemes)),
    ]


def _notes(results: Results) -> list[str]:
    notes = [
        f"Overall = unweighted mean of the {len(results.primary_dimensions)} primary-dimension accuracies; "
        "every other row counts each (image, test point) verdict once.",
        f"{results.num_verdicts} verdicts on {results.num_images} images of {results.num_prompts} of "
        f"{results.num_prompts_listed} listed prompts.",
    ]
    if results.incomplete_images:
        notes.append(
            f"{len(results.incomplete_images)} images judged on only some test points: {', '.join(results.incomplete_images[:10])}"
        )
    if results.missing_images:
        notes.append(
            f"{len(results.missing_images)} expected images have no verdict: {', '.join(results.missing_images[:10])}"
        )
    return notes


def load_results(path: str | Path) -> Results:
    """Read a results.json written by write_reports (or the official score JSON)."""
    return Results.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _images_on_disk(image_dir: Path) -> dict[int, list[str]]:
    """Image file names `{index}_{k}.*` in image_dir, by prompt index."""
    found: dict[int, list[str]] = defaultdict(list)
    if image_dir.is_dir():
        for path in image_dir.iterdir():
            head, _, tail = path.stem.partition("_")
            if head.isdigit() and tail.isdigit() and path.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}:
                found[int(head)].append(path.name)
    return found


def _image_order(name: str) -> tuple:
    head, _, tail = Path(name).stem.partition("_")
    return (int(tail) if tail.isdigit() else -1, name)


def _entry(
    prompt: BenchPrompt, verdicts: list[Verdict], on_disk: list[str], image_dir: Path, out_dir: Path, embed: bool
) -> Entry:
    """A prompt's card: one image per file judged or on disk, judgments in test-point order."""
    order = {tp.name: i for i, tp in enumerate(prompt.testpoints)}
    by_image: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_image[v.image].append(v)
    images = []
    for name in sorted(set(by_image) | set(on_disk), key=_image_order):
        path = image_dir / name
        judged = sorted(by_image.get(name, []), key=lambda v: order[v.testpoint])
        caption = name if judged else f"{name} (not judged)"
        if not path.is_file():
            caption += " (file missing)"
        src = image_src(path, out_dir, embed=embed and path.is_file())
        images.append(ImageRecord(src, caption, tuple(Judgment(v.testpoint, v.correct, v.explanation) for v in judged)))
    tags = tuple(
        dict.fromkeys(
            [tp.primary for tp in prompt.testpoints]
            + [tp.sub for tp in prompt.testpoints]
            + [f"theme: {prompt.theme}", f"subtheme: {subtheme_key(prompt)}"]
        )
    )
    return Entry(
        key=f"prompt {prompt.index}",
        title=prompt.text,
        subtitle=f"#{prompt.index} | {subtheme_key(prompt)}",
        tags=tags,
        images=tuple(images),
        notes=tuple(f"{tp.name}: {tp.description}" for tp in prompt.testpoints),
    )


def write_reports(
    results: Results,
    prompts: list[BenchPrompt],
    verdicts: list[Verdict],
    image_dir: str | Path,
    out_dir: str | Path,
    embed_images: bool = False,
) -> dict[str, Path]:
    """Write results.json, results.md, results.csv and report.html into out_dir; images are linked
    by paths relative to out_dir (embed_images: inlined as base64). Returns paths by kind."""
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, notes = results_tables(results), _notes(results)
    by_prompt: dict[int, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_prompt[v.prompt_index].append(v)
    on_disk = _images_on_disk(image_dir)
    shown = [p for p in sorted(prompts, key=lambda p: p.index) if by_prompt.get(p.index) or on_disk.get(p.index)]
    entries = [
        _entry(p, by_prompt.get(p.index, []), on_disk.get(p.index, []), image_dir, out_dir, embed_images) for p in shown
    ]
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    meta = {**results.meta, "overall": f"{100 * results.overall:.2f}%", "images": str(image_dir)}
    leaderboard = out_dir / "leaderboard.md"
    name = str(results.meta.get("model") or results.meta.get("policy") or "model").replace("|", "\\|")
    leaderboard.write_text(leaderboard_markdown(results, name), encoding="utf-8")
    return {
        "json": json_path,
        "leaderboard": leaderboard,
        "markdown": write_markdown(out_dir / "results.md", _title(results), tables, notes),
        "csv": write_csv(out_dir / "results.csv", tables),
        "html": write_html(out_dir / "report.html", _title(results), tables, entries, meta, notes),
    }


# The leaderboard's column order of the primary dimensions (names as the prompt files spell them).
LEADERBOARD_ORDER = (
    "Style", "World Knowledge", "Attribute", "Action", "Relationship",
    "Logical Reasoning", "Grammar", "Compound", "Entity Layout", "Text Generation",
)  # fmt: skip


def leaderboard_markdown(results: Results, name: str) -> str:
    """The results as a leaderboard row (Overall, then the primary dimensions, two decimals), then
    each primary dimension with its sub-dimensions."""
    primaries = sorted(
        results.primary_dimensions,
        key=lambda p: (LEADERBOARD_ORDER.index(p) if p in LEADERBOARD_ORDER else len(LEADERBOARD_ORDER), p),
    )
    overall = "-" if not results.num_verdicts else f"{100 * results.overall:.2f}"
    cells = [overall] + [f"{100 * results.primary_dimensions[p].accuracy:.2f}" for p in primaries]
    lines = [
        "| Model | Overall | " + " | ".join(primaries) + " |",
        "|---|" + "---:|" * (len(primaries) + 1),
        f"| {name} | " + " | ".join(cells) + " |",
        "",
    ]
    for primary in primaries:
        subs = [k for k in results.sub_dimensions if k.split("-", 1)[0].strip() == primary and k != primary]
        if subs:
            row = " | ".join(
                f"{k.split('-', 1)[1].strip()} {100 * results.sub_dimensions[k].accuracy:.2f}" for k in subs
            )
            lines.append(f"- **{primary}** {100 * results.primary_dimensions[primary].accuracy:.2f}: {row}")
    return "\n".join(lines) + "\n"


def paired_unigenbench(csv_a: Path, csv_b: Path) -> tuple[tuple[PairedDifference, ...], str]:
    """Per primary dimension, the verdicts of both runs paired by image and test point (the
    per-image files beside the results), with the Overall as the mean over dimensions."""
    if not csv_a.is_file() or not csv_b.is_file():
        return (), "No paired test: a run has no official_results.csv beside its results.json."
    a = {(Path(v.image).stem, v.testpoint): v.correct for v in read_official_results(csv_a)}
    b = {(Path(v.image).stem, v.testpoint): v.correct for v in read_official_results(csv_b)}
    shared = sorted(set(a) & set(b))
    if not shared:
        return (), "No paired test: the runs judged no image and test point in common."
    groups: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    for key in shared:
        primary = key[1].split("-", 1)[0].strip()
        groups[primary][0].append(a[key])
        groups[primary][1].append(b[key])
    parts = [paired_difference(name, xs, ys) for name, (xs, ys) in sorted(groups.items())]
    note = (
        f"Verdict by verdict on the {len(shared)} (image, test point) pairs both runs judged. p: exact McNemar "
        "test per primary dimension; Overall is their mean (normal approximation). Intervals: 95%."
    )
    return (*parts, mean_of_groups("Overall", parts)), note


def comparison_warnings(a: Results, b: Results) -> list[str]:
    """What makes two results not comparable: other prompt files, judges, protocols or dimensions."""
    warnings = []
    for key, what in (("prompt_file_sha256", "prompt files"), ("judge_model", "judges"), ("protocol", "protocols")):
        left, right = a.meta.get(key), b.meta.get(key)
        if left is not None and right is not None and left != right:
            warnings.append(f"the two runs used different {what} ({left} vs {right})")
    if set(a.sub_dimensions) != set(b.sub_dimensions):
        only = sorted(set(a.sub_dimensions) ^ set(b.sub_dimensions))
        warnings.append(f"the two runs judged different sub-dimensions (in one only: {only[:5]})")
    return warnings


def _title(results: Results) -> str:
    name = results.meta.get("model") or results.meta.get("policy")
    return f"{TITLE}: {name}" if name else TITLE


def _label(results: Results, path: Path) -> str:
    """The meta's model or policy, else the file name (its folder's, for a results.json)."""
    name = results.meta.get("model") or results.meta.get("policy")
    if name:
        return str(name)
    return path.parent.name if path.stem == "results" else path.stem


def compare_results(path_a: str | Path, path_b: str | Path, out_dir: str | Path | None = None) -> str:
    """Markdown comparing two results.json files per table row (differences are B - A); with
    out_dir, also writes comparison.md, comparison.csv and comparison.html there."""
    path_a, path_b = Path(path_a), Path(path_b)
    a, b = load_results(path_a), load_results(path_b)
    label_a, label_b = _label(a, path_a), _label(b, path_b)
    if label_a == label_b:
        label_a, label_b = f"{label_a} ({path_a})", f"{label_b} ({path_b})"
    comparison = compare_tables(results_tables(a), results_tables(b), label_a, label_b)
    paired, note = paired_unigenbench(path_a.parent / "official_results.csv", path_b.parent / "official_results.csv")
    comparison = dataclasses.replace(comparison, paired=paired, paired_note=note)
    if out_dir is not None:
        comparison.write(out_dir)
    warnings = comparison_warnings(a, b)
    return "".join(f"> warning: {w}\n" for w in warnings) + ("\n" if warnings else "") + comparison.markdown()
