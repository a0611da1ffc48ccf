"""Report files shared by the benchmarks: accuracy tables as Markdown and CSV, a self-contained
HTML page (inline CSS and script, no network) with each prompt's images and judgments, and a
side-by-side comparison of two result sets.

Images are referenced by paths relative to the HTML file by default, so a 2,400-image
UniGenBench report stays small and loads lazily; `image_src(..., embed=True)` inlines one as
base64 instead, for a single file that can be mailed around.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import mimetypes
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .paired import PairedDifference

CSV_COLUMNS = ("table", "name", "correct", "total", "accuracy")
PAIRED_COLUMNS = ("name", "items", "difference", "low", "high", "a_only", "b_only", "p_value")
COMPARISON_COLUMNS = ("table", "name", "total_a", "accuracy_a", "total_b", "accuracy_b", "difference")


@dataclass(frozen=True)
class Row:
    """One line of an accuracy table; correct/total are None for derived rows such as Overall."""

    name: str
    correct: int | None
    total: int | None
    accuracy: float


@dataclass(frozen=True)
class Table:
    """A titled list of rows, e.g. "Primary dimensions"."""

    title: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Judgment:
    """One verdict shown under an image: what was checked, the outcome, and why."""

    label: str
    correct: bool
    explanation: str = ""


@dataclass(frozen=True)
class ImageRecord:
    """An image in the HTML report: its src (relative path or data URI; "" for none), caption and judgments."""

    src: str
    caption: str = ""
    judgments: tuple[Judgment, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A card of the HTML report (a prompt, or a category): its images and the tags it is filed under."""

    key: str
    title: str
    subtitle: str = ""
    tags: tuple[str, ...] = ()
    images: tuple[ImageRecord, ...] = ()
    notes: tuple[str, ...] = ()


def format_accuracy(value: float | None) -> str:
    """A percentage with one decimal ("75.0%"), or "-" when absent."""
    return "-" if value is None else f"{100 * value:.1f}%"


def format_difference(value: float | None) -> str:
    """A signed difference in percentage points ("+2.5 pp"), or "-" when absent."""
    return "-" if value is None else f"{100 * value:+.1f} pp"


def format_interval(difference: PairedDifference) -> str:
    """A difference's 95% interval in percentage points ("-3.1 to +9.4 pp")."""
    low, high = difference.interval
    return f"{100 * low:+.1f} to {100 * high:+.1f} pp"


def format_score_interval(difference: PairedDifference) -> str:
    """A score difference's 95% interval in the score's own units ("-0.069 to +0.116")."""
    return f"{difference.low:+.3f} to {difference.high:+.3f}"


def format_p(p_value: float) -> str:
    """A p-value to three decimals, "<0.001" below that."""
    return "<0.001" if p_value < 0.0005 else f"{p_value:.3f}"


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


# ---------------------------------------------------------------- Markdown and CSV


def _md_cell(text: Any) -> str:
    """Make text safe inside a Markdown table cell: no pipes breaking columns, no line breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(table: Table) -> str:
    """The table as a GitHub Markdown table headed by its title."""
    lines = [f"### {_md_cell(table.title)}", "", "| name | correct | total | accuracy |", "|---|---:|---:|---:|"]
    for row in table.rows:
        lines.append(
            f"| {_md_cell(row.name)} | {_count(row.correct)} | {_count(row.total)} | {format_accuracy(row.accuracy)} |"
        )
    return "\n".join(lines)


def markdown_report(title: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> str:
    """A Markdown document: title, bullet notes, then each table."""
    parts = [f"# {_md_cell(title)}"]
    if notes:
        parts.append("\n".join(f"- {_md_cell(note)}" for note in notes))
    parts.extend(markdown_table(t) for t in tables)
    return "\n\n".join(parts) + "\n"


def write_markdown(path: str | Path, title: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> Path:
    """Write markdown_report(...) to path."""
    return _write_text(path, markdown_report(title, tables, notes))


def write_csv(path: str | Path, tables: Sequence[Table]) -> Path:
    """Write all tables as one long CSV with columns table, name, correct, total, accuracy."""
    rows = [
        [table.title, row.name, _count(row.correct), _count(row.total), repr(row.accuracy)]
        for table in tables
        for row in table.rows
    ]
    return _write_csv_rows(path, CSV_COLUMNS, rows)


def read_csv(path: str | Path) -> list[Table]:
    """Read a CSV written by write_csv back into tables (in file order)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: expected columns {CSV_COLUMNS}, got {reader.fieldnames}")
        grouped: dict[str, list[Row]] = {}
        for line in reader:
            correct = int(line["correct"]) if line["correct"] else None
            total = int(line["total"]) if line["total"] else None
            grouped.setdefault(line["table"], []).append(Row(line["name"], correct, total, float(line["accuracy"])))
    return [Table(title, tuple(rows)) for title, rows in grouped.items()]


def _write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;background:#fafafa}
h1{font-size:1.6em;margin:0 0 8px}
.tables{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
details{margin:12px 0}summary{cursor:pointer;font-weight:600}h2{margin-top:32px;border-bottom:2px solid #d0d4dc;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 20px;background:#fff}
th,td{border:1px solid #d0d4dc;padding:4px 10px;text-align:right}th{background:#eef0f4}
td.name,th.name{text-align:left}
td.acc{background-image:linear-gradient(to right,#bfe3c6 var(--w),transparent var(--w))}
td.up{color:#176b2c;font-weight:600}td.down{color:#a3221b;font-weight:600}
.meta{color:#4a5160;font-size:.9em}.meta code{background:#eef0f4;padding:1px 4px}
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #d0d4dc;z-index:1}
.tags a{display:inline-block;margin:2px 6px 2px 0;padding:2px 8px;border-radius:10px;background:#e3e8f2;color:#1d2330;text-decoration:none;font-size:.85em}
.entry{background:#fff;border:1px solid #d0d4dc;border-radius:6px;padding:12px;margin:14px 0}
.entry h3{margin:0 0 4px;font-size:1.05em}.sub{color:#4a5160;font-size:.9em;margin-bottom:6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:var(--thumb);font-size:.85em}
figure img{width:var(--thumb);height:auto;display:block;border:1px solid #c4c8d0;background:#ddd}
img.pixelated{image-rendering:pixelated}
.noimage{width:var(--thumb);height:var(--thumb);background:#e3e6ec;color:#4a5160;display:flex;align-items:center;justify-content:center}
figcaption{color:#4a5160;margin:4px 0;word-break:break-all}
ul.judgments{list-style:none;padding:0;margin:0}
ul.judgments li{padding:2px 4px;margin:2px 0;border-left:4px solid}
ul.judgments li.ok{border-color:#2e9a47;background:#eef8f0}ul.judgments li.fail{border-color:#c8372d;background:#fbeeed}
.explanation{color:#4a5160;display:block}
"""

_SCRIPT = """
(function(){
  var tag=document.getElementById('tag-filter'), fails=document.getElementById('fail-filter');
  function apply(){
    var want=tag.value, onlyFail=fails.checked, shown=0;
    document.querySelectorAll('.entry').forEach(function(el){
      var tags=JSON.parse(el.getAttribute('data-tags'));
      var ok=(!want||tags.indexOf(want)>=0)&&(!onlyFail||el.getAttribute('data-fail')==='1');
      el.style.display=ok?'':'none'; if(ok){shown++;}
    });
    document.getElementById('shown').textContent=shown;
  }
  tag.addEventListener('change',apply); fails.addEventListener('change',apply);
})();
"""


def image_src(image: str | Path, report_dir: str | Path, embed: bool = False) -> str:
    """How the report at report_dir refers to an image: a relative, URL-quoted path, or (embed) a
    base64 data URI of the file's bytes."""
    image = Path(image)
    if embed:
        mime = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(image.read_bytes()).decode('ascii')}"
    relative = os.path.relpath(image.resolve(), Path(report_dir).resolve())
    return quote(Path(relative).as_posix())


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: Table) -> str:
    head = "<tr><th class='name'>name</th><th>correct</th><th>total</th><th>accuracy</th></tr>"
    body = "".join(
        f"<tr><td class='name'>{_esc(r.name)}</td><td>{_count(r.correct)}</td><td>{_count(r.total)}</td>"
        f"<td class='acc' style='--w:{100 * r.accuracy:.1f}%'>{format_accuracy(r.accuracy)}</td></tr>"
        for r in table.rows
    )
    return f"<div><h3>{_esc(table.title)}</h3><table>{head}{body}</table></div>"


def _html_image(image: ImageRecord, pixelated: bool) -> str:
    items = "".join(
        f"<li class='{'ok' if j.correct else 'fail'}' data-label='{_esc(j.label)}' data-correct='{int(j.correct)}'>"
        f"<b>{'&#10003;' if j.correct else '&#10007;'} {_esc(j.label)}</b>"
        + (f"<span class='explanation'>{_esc(j.explanation)}</span>" if j.explanation else "")
        + "</li>"
        for j in image.judgments
    )
    css = " class='pixelated'" if pixelated else ""
    picture = (
        f"<img{css} src='{_esc(image.src)}' alt='{_esc(image.caption)}' loading='lazy'>"
        if image.src
        else "<div class='noimage'>no image</div>"
    )
    return f"<figure>{picture}<figcaption>{_esc(image.caption)}</figcaption><ul class='judgments'>{items}</ul></figure>"


def _html_entry(entry: Entry, anchor: str, tag_anchors: dict[str, str], pixelated: bool) -> str:
    failed = any(not j.correct for im in entry.images for j in im.judgments)
    tags = "".join(f"<a href='#{tag_anchors[t]}'>{_esc(t)}</a>" for t in entry.tags)
    notes = "".join(f"<div class='sub'>{_esc(n)}</div>" for n in entry.notes)
    images = "".join(_html_image(im, pixelated) for im in entry.images)
    return (
        f"<section class='entry' id='{anchor}' data-tags='{_esc(json.dumps(list(entry.tags)))}' data-fail='{int(failed)}'>"
        f"<h3>{_esc(entry.title)}</h3><div class='sub'>{_esc(entry.subtitle)}</div>"
        f"<div class='tags'>{tags}</div>{notes}<div class='grid'>{images}</div></section>"
    )


def _html_tag_index(entries: Sequence[Entry], anchors: dict[str, str], tag_anchors: dict[str, str]) -> str:
    """One anchored block per tag linking every entry filed under it."""
    blocks = []
    for tag, anchor in tag_anchors.items():
        links = "".join(f"<a href='#{anchors[e.key]}'>{_esc(e.key)}</a>" for e in entries if tag in e.tags)
        blocks.append(f"<div id='{anchor}'><b>{_esc(tag)}</b><div class='tags'>{links}</div></div>")
    return "".join(blocks)


def html_report(
    title: str,
    tables: Sequence[Table],
    entries: Sequence[Entry] = (),
    meta: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    thumb_px: int = 192,
    pixelated: bool = False,
) -> str:
    """A self-contained HTML page: tables, a per-tag index, a tag/failure filter, and each entry's
    image grid with its judgments. All text is escaped."""
    taken: set[str] = set()
    anchors = {e.key: "entry-" + _slug(e.key, taken) for e in entries}
    tags = sorted({t for e in entries for t in e.tags})
    tag_anchors = {t: "tag-" + _slug(t, taken) for t in tags}
    meta_html = "".join(f"<div><b>{_esc(k)}</b>: <code>{_esc(v)}</code></div>" for k, v in (meta or {}).items())
    notes_html = "".join(f"<div>{_esc(n)}</div>" for n in notes)
    options = "".join(f"<option value='{_esc(t)}'>{_esc(t)}</option>" for t in tags)
    filters = (
        f"<div class='filters'><label>show <select id='tag-filter'><option value=''>all</option>{options}</select></label> "
        f"<label><input type='checkbox' id='fail-filter'> only with a failed judgment</label> "
        f"(<span id='shown'>{len(entries)}</span> of {len(entries)} shown)</div>"
    )
    body = [f"<h1>{_esc(title)}</h1><div class='meta'>{meta_html}{notes_html}</div>", "<h2>Results</h2>"]
    body.append(f"<div class='tables'>{''.join(_html_table(t) for t in tables)}</div>")
    if entries:
        body += [
            f"<details><summary>Index: the {len(entries)} entries by tag ({len(tags)} tags)</summary>",
            _html_tag_index(entries, anchors, tag_anchors),
            "</details>",
            "<h2>Images</h2>",
            filters,
        ]
        body += [_html_entry(e, anchors[e.key], tag_anchors, pixelated) for e in entries]
        body.append(f"<script>{_SCRIPT}</script>")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>:root{{--thumb:{int(thumb_px)}px}}{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_html(
    path: str | Path,
    title: str,
    tables: Sequence[Table],
    entries: Sequence[Entry] = (),
    meta: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    thumb_px: int = 192,
    pixelated: bool = False,
) -> Path:
    """Write html_report(...) to path (image srcs must be relative to path's folder or data URIs)."""
    return _write_text(path, html_report(title, tables, entries, meta, notes, thumb_px, pixelated))


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ComparisonRow:
    """A row present in either result set; accuracy/total are None where a set lacks it."""

    table: str
    name: str
    total_a: int | None
    accuracy_a: float | None
    total_b: int | None
    accuracy_b: float | None

    @property
    def difference(self) -> float | None:
        """accuracy_b - accuracy_a, or None if either is absent."""
        if self.accuracy_a is None or self.accuracy_b is None:
            return None
        return self.accuracy_b - self.accuracy_a


@dataclass(frozen=True)
class Comparison:
    """Two result sets side by side; differences are B - A. `paired`: per-group paired tests of
    the difference when both sets judged the same items (`paired_note` says which, or why not);
    `paired_scores`: the same for a graded score of each item (`paired_scores_note`)."""

    label_a: str
    label_b: str
    rows: tuple[ComparisonRow, ...]
    paired: tuple[PairedDifference, ...] = ()
    paired_note: str = ""
    paired_scores: tuple[PairedDifference, ...] = ()
    paired_scores_note: str = ""

    def tables(self) -> list[str]:
        """Table titles in order."""
        return list(dict.fromkeys(r.table for r in self.rows))

    def markdown(self) -> str:
        """One Markdown table per source table, with both accuracies and B - A."""
        a, b = _md_cell(self.label_a), _md_cell(self.label_b)
        parts = [f"# {a} vs {b}", "Differences are B - A: positive means B is better."]
        for title in self.tables():
            lines = [f"### {_md_cell(title)}", "", f"| name | A: {a} | B: {b} | B - A |", "|---|---:|---:|---:|"]
            for r in self.rows:
                if r.table == title:
                    lines.append(
                        f"| {_md_cell(r.name)} | {format_accuracy(r.accuracy_a)} | {format_accuracy(r.accuracy_b)} | {format_difference(r.difference)} |"
                    )
            parts.append("\n".join(lines))
        for title, note, tests, headers, cells in self._paired_sections():
            lines = [f"### {title}", "", _md_cell(note)]
            if tests:
                lines += ["", "| name | " + " | ".join(headers) + " |", "|---" + "|---:" * len(headers) + "|"]
                lines += ["| " + " | ".join([_md_cell(d.name), *cells(d)]) + " |" for d in tests]
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """Write rows with columns table, name, total_a, accuracy_a, total_b, accuracy_b, difference."""
        rows = [
            [
                r.table,
                r.name,
                _count(r.total_a),
                _opt(r.accuracy_a),
                _count(r.total_b),
                _opt(r.accuracy_b),
                _opt(r.difference),
            ]
            for r in self.rows
        ]
        return _write_csv_rows(path, COMPARISON_COLUMNS, rows)

    def html(self) -> str:
        """A self-contained HTML page with one table per source table; gains green, losses red."""
        a, b = _esc(self.label_a), _esc(self.label_b)
        body = [f"<h1>{a} vs {b}</h1><div class='meta'>Differences are B - A: positive means B is better.</div>"]
        for title in self.tables():
            head = f"<tr><th class='name'>name</th><th>A: {a}</th><th>B: {b}</th><th>B - A</th></tr>"
            rows = "".join(
                f"<tr><td class='name'>{_esc(r.name)}</td><td>{format_accuracy(r.accuracy_a)}</td><td>{format_accuracy(r.accuracy_b)}</td>"
                f"<td class='{_direction(r.difference)}'>{format_difference(r.difference)}</td></tr>"
                for r in self.rows
                if r.table == title
            )
            body.append(f"<h3>{_esc(title)}</h3><table>{head}{rows}</table>")
        for title, note, tests, headers, cells in self._paired_sections():
            body.append(f"<h3>{_esc(title)}</h3><div class='meta'>{_esc(note)}</div>")
            if tests:
                head = "".join(f"<th>{h}</th>" for h in headers)
                rows = "".join(
                    f"<tr><td class='name'>{_esc(d.name)}</td>"
                    + "".join(
                        f"<td class='{_direction(d.difference)}'>{c}</td>" if i == 1 else f"<td>{c}</td>"
                        for i, c in enumerate(cells(d))
                    )
                    + "</tr>"
                    for d in tests
                )
                body.append(f"<table><tr><th class='name'>name</th>{head}</tr>{rows}</table>")
        return (
            f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{a} vs {b}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
        )

    def _paired_sections(self) -> list[tuple[str, str, tuple[PairedDifference, ...], Sequence[str], Any]]:
        """(title, note, tests, headers, cell formatter) of each paired section there is."""
        sections = []
        if self.paired or self.paired_note:
            sections.append(("Paired test", self.paired_note, self.paired, PAIRED_HEADERS, _paired_cells))
        if self.paired_scores or self.paired_scores_note:
            sections.append(("Paired score", self.paired_scores_note, self.paired_scores, SCORE_HEADERS, _score_cells))
        return sections

    def write_paired_csv(self, path: str | Path, tests: Sequence[PairedDifference] | None = None) -> Path:
        """Write paired tests (default: the accuracy tests) with columns name, items, difference,
        low, high, a_only, b_only, p_value."""
        tests = self.paired if tests is None else tests
        rows = [
            [d.name, d.n, repr(d.difference), repr(d.low), repr(d.high), d.a_only, d.b_only, repr(d.p_value)]
            for d in tests
        ]
        return _write_csv_rows(path, PAIRED_COLUMNS, rows)

    def write(self, out_dir: str | Path, stem: str = "comparison") -> dict[str, Path]:
        """Write {stem}.md, {stem}.csv and {stem}.html (and {stem}_paired.csv and
        {stem}_paired_score.csv with paired tests) into out_dir; returns their paths by kind."""
        out_dir = Path(out_dir)
        paths = {
            "markdown": _write_text(out_dir / f"{stem}.md", self.markdown()),
            "csv": self.write_csv(out_dir / f"{stem}.csv"),
            "html": _write_text(out_dir / f"{stem}.html", self.html()),
        }
        if self.paired:
            paths["paired_csv"] = self.write_paired_csv(out_dir / f"{stem}_paired.csv")
        if self.paired_scores:
            paths["paired_score_csv"] = self.write_paired_csv(out_dir / f"{stem}_paired_score.csv", self.paired_scores)
        return paths


PAIRED_HEADERS = ("items", "B - A", "95% interval", "only A right", "only B right", "p")
SCORE_HEADERS = ("items", "B - A", "95% interval", "A higher", "B higher", "p")


def _paired_cells(d: PairedDifference) -> list[str]:
    """A paired test's cells under PAIRED_HEADERS."""
    return [
        str(d.n),
        format_difference(d.difference),
        format_interval(d),
        str(d.a_only),
        str(d.b_only),
        format_p(d.p_value),
    ]


def _score_cells(d: PairedDifference) -> list[str]:
    """A paired score difference's cells under SCORE_HEADERS (scores in their own units)."""
    return [
        str(d.n),
        f"{d.difference:+.3f}",
        format_score_interval(d),
        str(d.a_only),
        str(d.b_only),
        format_p(d.p_value),
    ]


def _write_csv_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def _direction(difference: float | None) -> str:
    if difference is None or abs(difference) < 5e-4:
        return ""
    return "up" if difference > 0 else "down"


def compare_tables(a: Sequence[Table], b: Sequence[Table], label_a: str = "A", label_b: str = "B") -> Comparison:
    """Match tables by title and rows by name; rows only one side has keep None on the other."""
    rows: list[ComparisonRow] = []
    titles = list(dict.fromkeys([t.title for t in a] + [t.title for t in b]))
    for title in titles:
        rows_a = _rows_by_name(a, title)
        rows_b = _rows_by_name(b, title)
        for name in dict.fromkeys(list(rows_a) + list(rows_b)):
            ra, rb = rows_a.get(name), rows_b.get(name)
            rows.append(
                ComparisonRow(
                    title,
                    name,
                    ra.total if ra else None,
                    ra.accuracy if ra else None,
                    rb.total if rb else None,
                    rb.accuracy if rb else None,
                )
            )
    return Comparison(label_a, label_b, tuple(rows))


def _rows_by_name(tables: Iterable[Table], title: str) -> dict[str, Row]:
    return {r.name: r for t in tables if t.title == title for r in t.rows}
