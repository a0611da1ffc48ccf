"""Read and write UniGenBench prompt files (the public release's `data/test_prompts_*.csv`).

A prompt file is a CSV with a header `index,prompt_en,sub_dims_en` (English) or
`index,prompt_zh,sub_dims_zh` (Chinese); early versions of the long files named the columns
`prompt_en_long`/`sub_dims_en_long`, which are accepted too. The metadata column holds a JSON
object: in English files "Primary Categories" (the theme), "Secondary Categories" (the
subtheme), "Subjects", "Sentence Structure", "Testpoints" (names such as "Attribute - Quantity")
and "Testpoint Description" (one phrase per test point, aligned with "Testpoints"); Chinese files
use the keys 一级垂类, 二级垂类, 主体, 句式, 考点 and 考点对应描述 for the same fields.

    prompts = load_prompts("data/test_prompts_en_long.csv", on_error="skip")
    report = load_prompts_report(path, on_error="skip")   # .prompts and .skipped rows

A bad row (JSON that does not parse, test points and descriptions of different lengths, an empty
prompt, an index that is not an integer or repeats an earlier one) raises PromptFileError naming
the file, the row (its line in the file and its index) and what is wrong; with on_error="skip"
it is dropped with a PromptFileWarning saying the same, and listed in the report's `skipped`.
Problems with the file as a whole (missing or ambiguous columns, no rows) always raise.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .types import BenchPrompt, TestPoint

LANGUAGES = ("en", "zh")
ON_ERROR = ("stop", "skip", "fix")
# Known defects of the public prompt files, repaired by on_error="fix": (index, broken text of the
# metadata cell, repaired text). The English long file's row 509 lacks one comma between two test
# point names, which makes its JSON unreadable (the official evaluation stops there).
KNOWN_FIXES = ((509, '"Grammar - Negation" "Attribute - Color"', '"Grammar - Negation", "Attribute - Color"'),)

# JSON keys of the metadata column, per language, in the order the public files write them.
# "Checkpoints"/"Checkpoints Description" are what early versions of the English long file used.
METADATA_KEYS = {
    "en": {
        "theme": "Primary Categories",
        "subtheme": "Secondary Categories",
        "subject": "Subjects",
        "sentence_structure": "Sentence Structure",
        "testpoints": "Testpoints",
        "descriptions": "Testpoint Description",
    },
    "zh": {
        "theme": "一级垂类",
        "subtheme": "二级垂类",
        "subject": "主体",
        "testpoints": "考点",
        "sentence_structure": "句式",
        "descriptions": "考点对应描述",
    },
}
KEY_ALIASES = {"testpoints": ("Checkpoints",), "descriptions": ("Checkpoints Description",)}
REQUIRED_FIELDS = ("theme", "subtheme", "testpoints", "descriptions")


class PromptFileError(ValueError):
    """A prompt file, or one of its rows, is not in the UniGenBench format."""


class PromptFileWarning(UserWarning):
    """A row of a prompt file was skipped (load_prompts with on_error="skip")."""


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped by on_error="skip": its 1-based line in the file, its index as written
    (None when unreadable) and what was wrong with it."""

    line: int
    index: str | None
    reason: str


@dataclass
class LoadReport:
    """What load_prompts_report read: the good prompts, the skipped rows and the columns used."""

    path: str
    language: str
    prompt_column: str
    metadata_column: str
    prompts: list[BenchPrompt] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)  # "index N: what was repaired" (on_error="fix")


def load_prompts(path: str | os.PathLike, on_error: str = "stop", language: str | None = None) -> list[BenchPrompt]:
    """The prompts of a UniGenBench CSV file, in file order (see load_prompts_report)."""
    return load_prompts_report(path, on_error=on_error, language=language).prompts


def load_prompts_report(path: str | os.PathLike, on_error: str = "stop", language: str | None = None) -> LoadReport:
    """Read a prompt file. on_error: "stop" raises PromptFileError at the first bad row, "skip"
    drops it with a PromptFileWarning and lists it in `skipped`, "fix" repairs the public files'
    known defects (KNOWN_FIXES, listed in `fixed`) and stops at other bad rows. language: "en",
    "zh" or None to detect it from the header."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if language is not None and language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES} or None (detect from the header), got {language!r}")
    name = str(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise PromptFileError(f"{name}: cannot open the prompt file: {error}") from None
    with handle:
        try:
            records = list(_records(csv.reader(handle)))
        except (csv.Error, UnicodeDecodeError) as error:
            raise PromptFileError(f"{name}: not a readable UTF-8 CSV file: {error}") from None
    if not records:
        raise PromptFileError(
            f"{name}: the file is empty; expected a header such as 'index,prompt_en,sub_dims_en' and rows"
        )
    (_, header), rows = records[0], records[1:]
    report = _columns(name, header, language)
    if not rows:
        raise PromptFileError(f"{name}: the file has a header but no rows")
    seen: dict[int, int] = {}  # index -> line of its first row
    for number, (line, cells) in enumerate(rows, start=1):
        raw_index = cells[0].strip() if cells else None
        if on_error == "fix":
            cells = _known_fix(cells, raw_index, report)
        try:
            prompt = _parse_row(cells, header, report)
            if prompt.index in seen:
                raise _RowError(
                    f"index {prompt.index} repeats the row on line {seen[prompt.index]}; indices must be unique"
                )
        except _RowError as error:
            where = f"{name}: row {number} (line {line}, index {raw_index!r})"
            if on_error in ("stop", "fix"):
                raise PromptFileError(f"{where}: {error}") from None
            warnings.warn(f"{where}: {error}; row skipped", PromptFileWarning, stacklevel=3)
            report.skipped.append(SkippedRow(line=line, index=raw_index, reason=str(error)))
            continue
        seen[prompt.index] = line
        report.prompts.append(prompt)
    return report


def write_prompts(path: str | os.PathLike, prompts: Iterable[BenchPrompt], language: str = "en") -> None:
    """Write prompts as a UniGenBench CSV file (columns index, prompt_{language},
    sub_dims_{language}); the file is replaced atomically."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    rows = [_row(prompt, language) for prompt in prompts]
    indices = [row[0] for row in rows]
    if len(set(indices)) != len(indices):
        repeated = sorted({index for index in indices if indices.count(index) > 1})
        raise ValueError(f"write_prompts: indices must be unique, got repeated {repeated}")
    target = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")  # the public files use LF and minimal quoting
            writer.writerow(["index", f"prompt_{language}", f"sub_dims_{language}"])
            writer.writerows(rows)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------


def _known_fix(cells: list[str], raw_index: str | None, report: LoadReport) -> list[str]:
    """The row with a known defect of the public files repaired (and noted in the report)."""
    for index, broken, repaired in KNOWN_FIXES:
        if raw_index == str(index) and len(cells) > 2 and broken in cells[2]:
            report.fixed.append(f"index {index}: {broken!r} -> {repaired!r}")
            return [*cells[:2], cells[2].replace(broken, repaired), *cells[3:]]
    return cells


class _RowError(Exception):
    """What is wrong with one row (the caller adds the file and row)."""


def _records(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(1-based line where the record starts, cells) per non-blank CSV record."""
    end = 0
    for cells in reader:
        start, end = end + 1, reader.line_num
        if cells and any(cell.strip() for cell in cells):
            yield start, cells


def _columns(name: str, header: list[str], language: str | None) -> LoadReport:
    """The report skeleton with the language and the prompt/metadata columns found in the header."""
    header = [cell.strip() for cell in header]
    if "index" not in header:
        raise PromptFileError(
            f"{name}: no 'index' column in the header {header}; expected e.g. index,prompt_en,sub_dims_en"
        )
    found = {}
    for lang in LANGUAGES if language is None else (language,):
        for suffix in ("", "_long"):
            prompt_column, metadata_column = f"prompt_{lang}{suffix}", f"sub_dims_{lang}{suffix}"
            if prompt_column in header and metadata_column in header:
                found.setdefault(lang, (prompt_column, metadata_column))
    if not found:
        wanted = " or ".join(
            f"prompt_{lang}/sub_dims_{lang}" for lang in (LANGUAGES if language is None else (language,))
        )
        raise PromptFileError(f"{name}: the header {header} lacks the columns {wanted}")
    if len(found) > 1:
        raise PromptFileError(
            f"{name}: the header {header} has both English and Chinese columns; pass language='en' or 'zh'"
        )
    lang, (prompt_column, metadata_column) = next(iter(found.items()))
    return LoadReport(path=name, language=lang, prompt_column=prompt_column, metadata_column=metadata_column)


def _parse_row(cells: list[str], header: list[str], report: LoadReport) -> BenchPrompt:
    """One row as a BenchPrompt, or _RowError saying what is wrong."""
    if len(cells) != len(header):
        raise _RowError(
            f"has {len(cells)} fields, expected {len(header)} like the header (unbalanced quotes or a stray comma?)"
        )
    row = dict(zip((cell.strip() for cell in header), cells))
    try:
        index = int(row["index"].strip())
    except ValueError:
        raise _RowError(f"index {row['index']!r} is not an integer") from None
    text = row[report.prompt_column].strip()
    if not text:
        raise _RowError(f"the prompt (column {report.prompt_column!r}) is empty")
    try:
        metadata = json.loads(row[report.metadata_column])
    except json.JSONDecodeError as error:
        raise _RowError(f"column {report.metadata_column!r} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise _RowError(f"column {report.metadata_column!r} must hold a JSON object, got {type(metadata).__name__}")
    fields = _fields(metadata, report.metadata_column)
    testpoints = tuple(
        TestPoint(name=name, description=description)
        for name, description in zip(fields["testpoints"], fields["descriptions"])
    )
    return BenchPrompt(
        index=index,
        text=text,
        theme=fields["theme"],
        subtheme=fields["subtheme"],
        testpoints=testpoints,
        subject=fields.get("subject", ""),
        sentence_structure=fields.get("sentence_structure", ""),
    )


def _fields(metadata: dict, column: str) -> dict:
    """The metadata's fields by our names, checked: strings, and aligned non-empty lists."""
    fields = {}
    for key in METADATA_KEYS["en"]:
        names = [names[key] for names in METADATA_KEYS.values()] + list(KEY_ALIASES.get(key, ()))
        present = [name for name in names if name in metadata]
        if present:
            fields[key] = metadata[present[0]]
        elif key in REQUIRED_FIELDS:
            raise _RowError(
                f"column {column!r} has no key {' or '.join(map(repr, names[:2]))}; keys present: {sorted(metadata)}"
            )
    for key in ("theme", "subtheme", "subject", "sentence_structure"):
        if key in fields and not isinstance(fields[key], str):
            raise _RowError(f"{METADATA_KEYS['en'][key]!r} must be a string, got {fields[key]!r}")
    # names must be non-empty; a description may be empty (the public English short file has one)
    for key, nonempty in (("testpoints", True), ("descriptions", False)):
        value = fields[key]
        if not isinstance(value, list) or not all(
            isinstance(item, str) and (item.strip() or not nonempty) for item in value
        ):
            kind = "non-empty strings" if nonempty else "strings"
            raise _RowError(f"{METADATA_KEYS['en'][key]!r} must be a list of {kind}, got {value!r}")
    names, descriptions = fields["testpoints"], fields["descriptions"]
    if not names:
        raise _RowError("the row has no test points")
    if len(names) != len(descriptions):
        raise _RowError(
            f"{len(names)} test points but {len(descriptions)} descriptions; expected one description per test point "
            f"(test points: {names})"
        )
    fields["testpoints"] = [name.strip() for name in names]
    return fields


def _row(prompt: BenchPrompt, language: str) -> list[object]:
    """The CSV cells of one prompt, checked so that load_prompts reads it back."""
    if not isinstance(prompt, BenchPrompt):
        raise TypeError(f"write_prompts expects BenchPrompt objects, got {type(prompt).__name__}")
    if not prompt.text.strip() or not prompt.testpoints:
        raise ValueError(f"write_prompts: prompt {prompt.index} needs a non-empty text and at least one test point")
    if not all(point.name.strip() for point in prompt.testpoints):
        raise ValueError(
            f"write_prompts: prompt {prompt.index} has a test point with an empty name: {prompt.testpoints}"
        )
    keys = METADATA_KEYS[language]
    values = {
        "theme": prompt.theme,
        "subtheme": prompt.subtheme,
        "subject": prompt.subject,
        "sentence_structure": prompt.sentence_structure,
        "testpoints": [point.name for point in prompt.testpoints],
        "descriptions": [point.description for point in prompt.testpoints],
    }
    metadata = {keys[key]: values[key] for key in keys}  # dicts keep the key order of METADATA_KEYS
    return [int(prompt.index), prompt.text, json.dumps(metadata, ensure_ascii=False)]
