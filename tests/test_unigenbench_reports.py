"""UniGenBench aggregation against a hand computation, and the report files of UniGenBench and
ToyShapes (Markdown, CSV, HTML, comparisons); a browser test renders report.html when Chromium exists."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from flowrl.benchmarks.report import Row, Table, compare_tables, read_csv
from flowrl.benchmarks.toyshapes.evaluate import EvalReport, report_from_images
from flowrl.benchmarks.toyshapes.prompts import eval_prompts
from flowrl.benchmarks.toyshapes.render import render_batch
from flowrl.benchmarks.toyshapes.report import compare_toyshapes, load_report, toyshapes_tables, write_toyshapes_reports
from flowrl.benchmarks.unigenbench.aggregate import Results, Tally, aggregate
from flowrl.benchmarks.unigenbench.report import compare_results, load_results, results_tables, write_reports
from flowrl.benchmarks.unigenbench.types import BenchPrompt, Verdict
from flowrl.benchmarks.unigenbench.types import TestPoint as Point  # a Test* name would be collected by pytest

slow = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"

# ------------------------------------------------------------------ the made-up benchmark
#
# prompt 0 (Art / Graphic Art):   Style, Attribute - Quantity, Attribute - Color
# prompt 1 (Design / UI Design):  Attribute - Quantity, World Knowledge, Style
# two images each; verdicts (1 = correct):
#
#   image    Style  Quantity  Color  World Knowledge   correct/3
#   0_0.png    1       0        1          .              2
#   0_1.png    1       1        0          .              2
#   1_0.png    0       0        .          1              1
#   1_1.png    1       0        .          0              1
#
# sub-dimensions:  Style 3/4 = 0.75, Attribute - Quantity 1/4 = 0.25,
#                  Attribute - Color 1/2 = 0.5, World Knowledge 1/2 = 0.5
# primaries:       Attribute (Quantity + Color pooled) 2/6 = 1/3  (not the mean of 0.25 and 0.5 = 0.375),
#                  Style 3/4, World Knowledge 1/2
# Overall        = (1/3 + 3/4 + 1/2) / 3 = (4 + 9 + 6) / 36 = 19/36 = 0.52777...
# all verdicts   = 6/12 = 0.5 (differs from Overall)
# themes:          Art 4/6 = 2/3, Design 2/6 = 1/3; subthemes "Art / Graphic Art" 4/6, "Design / UI Design" 2/6

STYLE, QUANTITY, COLOR, KNOWLEDGE = "Style", "Attribute - Quantity", "Attribute - Color", "World Knowledge"
TABLE = {
    (0, 0): {STYLE: 1, QUANTITY: 0, COLOR: 1},
    (0, 1): {STYLE: 1, QUANTITY: 1, COLOR: 0},
    (1, 0): {QUANTITY: 0, KNOWLEDGE: 1, STYLE: 0},
    (1, 1): {QUANTITY: 0, KNOWLEDGE: 0, STYLE: 1},
}
EVIL = '<script>alert("x")</script> & a cat'
COLOURS = {(0, 0): (230, 25, 25), (0, 1): (25, 200, 40), (1, 0): (30, 60, 235), (1, 1): (240, 200, 20)}


def make_prompts(evil: bool = False) -> list[BenchPrompt]:
    """The two prompts of the table above (prompt 0's text is script-like when evil)."""
    return [
        BenchPrompt(
            0,
            EVIL if evil else "an ink painting of two red pandas",
            "Art",
            "Graphic Art",
            (Point(STYLE, "ink painting"), Point(QUANTITY, "two pandas"), Point(COLOR, "red")),
        ),
        BenchPrompt(
            1,
            "a login screen with a pyramid icon and three cats",
            "Design",
            "UI Design",
            (Point(QUANTITY, "three cats"), Point(KNOWLEDGE, "pyramid"), Point(STYLE, "flat UI")),
        ),
    ]


def make_verdicts() -> list[Verdict]:
    """The verdicts of the table above, with an explanation naming image and test point."""
    return [
        Verdict(f"{i}_{k}.png", i, name, bool(ok), f"judge on {i}_{k} / {name}: {'yes' if ok else 'no <b>'}")
        for (i, k), row in TABLE.items()
        for name, ok in row.items()
    ]


def write_images(folder: Path) -> Path:
    """Solid-colour 64x64 PNGs {index}_{k}.png, one colour per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for (i, k), colour in COLOURS.items():
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}_{k}.png")
    return folder


# ------------------------------------------------------------------ aggregation


def test_aggregate_matches_hand_computation():
    r = aggregate(make_prompts(), make_verdicts(), images_per_prompt=2)
    assert r.sub_dimensions == {COLOR: Tally(1, 2), QUANTITY: Tally(1, 4), STYLE: Tally(3, 4), KNOWLEDGE: Tally(1, 2)}
    assert r.primary_dimensions == {"Attribute": Tally(2, 6), "Style": Tally(3, 4), "World Knowledge": Tally(1, 2)}
    assert r.primary_dimensions["Attribute"].accuracy == pytest.approx(1 / 3)  # micro, not (0.25 + 0.5) / 2
    assert r.themes == {"Art": Tally(4, 6), "Design": Tally(2, 6)}
    assert r.subthemes == {"Art / Graphic Art": Tally(4, 6), "Design / UI Design": Tally(2, 6)}
    assert r.overall == pytest.approx(19 / 36)
    assert r.micro_accuracy == pytest.approx(0.5)
    assert (r.num_images, r.num_verdicts, r.num_prompts, r.num_prompts_listed) == (4, 12, 2, 2)
    assert r.incomplete_images == [] and r.missing_images == []


def test_overall_is_unweighted_mean_of_primary_accuracies():
    r = aggregate(make_prompts(), make_verdicts())
    primaries = [t.accuracy for t in r.primary_dimensions.values()]
    assert r.overall == pytest.approx(sum(primaries) / len(primaries))
    assert r.overall != pytest.approx(r.micro_accuracy)


def test_subthemes_are_keyed_by_theme_and_coverage_is_reported():
    # "Other" is a subtheme of both Art and Design in the official prompt file; they must not merge.
    prompts = make_prompts() + [
        BenchPrompt(2, "p2", "Art", "Other", (Point(STYLE, "s"),)),
        BenchPrompt(3, "p3", "Design", "Other", (Point(STYLE, "s"),)),
        BenchPrompt(4, "p4", "Design", "Other", (Point(STYLE, "s"),)),
    ]
    verdicts = [v for v in make_verdicts() if not (v.image == "1_1.png" and v.testpoint == KNOWLEDGE)]
    verdicts += [Verdict("2_0.png", 2, STYLE, True), Verdict("3_0.png", 3, STYLE, False)]
    r = aggregate(prompts, verdicts, images_per_prompt=2)
    assert r.subthemes["Art / Other"] == Tally(1, 1) and r.subthemes["Design / Other"] == Tally(0, 1)
    assert r.themes["Art"] == Tally(5, 7)  # 4/6 from prompt 0 + 1/1 from prompt 2
    assert r.incomplete_images == ["1_1.png"]  # judged on Quantity and Style, not World Knowledge
    assert r.missing_images == ["2_1.png", "3_1.png", "4_0.png", "4_1.png"]
    assert (r.num_prompts, r.num_prompts_listed) == (4, 5)


def test_unknown_testpoint_prompt_or_repeat_raises_naming_it():
    prompts = make_prompts()
    with pytest.raises(ValueError, match=r"0_0\.png: 'Attribute - Size'"):
        aggregate(prompts, make_verdicts() + [Verdict("0_0.png", 0, "Attribute - Size", True)])
    with pytest.raises(ValueError, match=r"7_0\.png \(prompt 7\)"):
        aggregate(prompts, [Verdict("7_0.png", 7, STYLE, True)])
    with pytest.raises(ValueError, match=r"repeated .*0_0\.png: 'Style'"):
        aggregate(prompts, make_verdicts() + [Verdict("0_0.png", 0, STYLE, False)])
    with pytest.raises(ValueError, match=r"1_0\.png \(prompt_index 0\)"):
        aggregate(prompts, [Verdict("1_0.png", 0, STYLE, True)])


def test_json_round_trip_keeps_everything_and_meta():
    meta = {"model": "sd3.5-m", "policy": "flowgrpo-step400", "judge": "qwen2.5-vl-72b", "dates": ["2025-09-01"]}
    r = aggregate(make_prompts(), make_verdicts(), images_per_prompt=3, meta=meta)
    text = json.dumps(r.to_dict())
    back = Results.from_dict(json.loads(text))
    assert back == r
    assert back.meta == meta and back.missing_images == ["0_2.png", "1_2.png"]


def test_from_dict_reads_the_official_score_json():
    # The official calculate_scores JSON keys primaries as cp.split("-", 1)[0]: "Attribute " with a space.
    official = {
        "primary_dimensions": {
            "Attribute ": {"correct": 2, "total": 6, "accuracy": 0.3333},
            "Style": {"correct": 3, "total": 4, "accuracy": 0.75},
        },
        "sub_dimensions": {QUANTITY: {"correct": 1, "total": 4, "accuracy": 0.25}},
    }
    r = Results.from_dict(official)
    assert set(r.primary_dimensions) == {"Attribute", "Style"}
    assert r.overall == pytest.approx((1 / 3 + 3 / 4) / 2)
    with pytest.raises(ValueError, match="missing"):
        Results.from_dict({"overall": 0.5})


# ------------------------------------------------------------------ UniGenBench report files


@pytest.fixture
def written(tmp_path):
    """Reports of the made-up benchmark, with images in a sibling folder of the report folder."""
    image_dir = write_images(tmp_path / "images")
    prompts, verdicts = make_prompts(evil=True), make_verdicts()
    results = aggregate(prompts, verdicts, meta={"model": "tiny <model>"})
    paths = write_reports(results, prompts, verdicts, image_dir, tmp_path / "report")
    return results, prompts, verdicts, paths


def test_markdown_and_csv_hold_every_row(written):
    results, _, _, paths = written
    assert set(paths) == {"json", "markdown", "csv", "html", "leaderboard"} and all(p.is_file() for p in paths.values())
    md = paths["markdown"].read_text()
    assert "| Attribute | 2 | 6 | 33.3% |" in md
    assert "| Overall |  |  | 52.8% |" in md
    assert "| Art / Graphic Art | 4 | 6 | 66.7% |" in md
    with paths["csv"].open() as f:
        lines = list(csv.DictReader(f))
    parsed = {(line["table"], line["name"]): line for line in lines}
    assert len(parsed) == len(lines) == 2 + 3 + 4 + 2 + 2
    assert (
        parsed[("Primary dimensions", "Attribute")]["correct"] == "2"
        and parsed[("Primary dimensions", "Attribute")]["total"] == "6"
    )
    assert float(parsed[("Summary", "Overall")]["accuracy"]) == pytest.approx(19 / 36)
    assert float(parsed[("Themes", "Design")]["accuracy"]) == pytest.approx(1 / 3)
    assert read_csv(paths["csv"]) == results_tables(results)  # exact round trip
    assert load_results(paths["json"]) == results


class _ReportParser(HTMLParser):
    """Collects entry titles, images with their judgments, and anchors of a report page."""

    def __init__(self):
        super().__init__()
        self.titles, self.figures, self.ids, self.links = [], [], set(), set()
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.add(a["href"][1:])
        if tag == "section":
            self.titles.append("")
        if tag == "h3" and self.titles and self.titles[-1] == "":
            self._in_title = True
        if tag == "img":
            self.figures.append((a["src"], []))
        if tag == "li" and "data-label" in a:
            self.figures[-1][1].append((a["data-label"], a["data-correct"] == "1"))

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.titles[-1] += data


def test_html_has_every_prompt_image_and_verdict_and_escapes(written):
    _, prompts, verdicts, paths = written
    page = paths["html"].read_text()
    parser = _ReportParser()
    parser.feed(page)
    assert parser.titles == [p.text for p in prompts]  # unescaped back to the exact texts
    assert EVIL not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a cat" in page
    assert "no <b>" not in page and "tiny <model>" not in page  # explanations and meta escaped too
    shown = {Path(src).name: judged for src, judged in parser.figures}
    expected: dict[str, list] = {}
    for v in verdicts:
        expected.setdefault(v.image, []).append((v.testpoint, v.correct))
    assert shown == expected  # every image once, with every verdict, in the prompt's test-point order
    for src, _ in parser.figures:
        assert src.startswith("../images/") and (paths["html"].parent / src).is_file()
    for v in verdicts:
        assert v.explanation.replace("<b>", "&lt;b&gt;") in page
    assert parser.links <= parser.ids  # every in-page link (dimension index, tags) has its anchor
    assert {"tag-attribute-quantity", "tag-style", "tag-world-knowledge"} <= parser.ids
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network


def test_embedded_images_are_data_uris(tmp_path):
    image_dir = write_images(tmp_path / "images")
    results = aggregate(make_prompts(), make_verdicts())
    paths = write_reports(results, make_prompts(), make_verdicts(), image_dir, tmp_path / "out", embed_images=True)
    parser = _ReportParser()
    parser.feed(paths["html"].read_text())
    assert len(parser.figures) == 4 and all(src.startswith("data:image/png;base64,") for src, _ in parser.figures)


def test_comparison_differences_are_b_minus_a(tmp_path):
    a = aggregate(make_prompts(), make_verdicts(), meta={"model": "base"})
    flipped = [
        Verdict(v.image, v.prompt_index, v.testpoint, True, v.explanation) if v.testpoint == QUANTITY else v
        for v in make_verdicts()
    ]
    b = aggregate(make_prompts(), flipped[:-1], meta={"model": "tuned"})  # last verdict (1_1 Style) dropped
    (tmp_path / "a.json").write_text(json.dumps(a.to_dict()))
    (tmp_path / "b.json").write_text(json.dumps(b.to_dict()))
    md = compare_results(tmp_path / "a.json", tmp_path / "b.json", out_dir=tmp_path / "cmp")
    assert "| Attribute - Quantity | 25.0% | 100.0% | +75.0 pp |" in md
    with (tmp_path / "cmp" / "comparison.csv").open() as f:
        rows = {(r["table"], r["name"]): r for r in csv.DictReader(f)}
    tables = {
        "Primary dimensions": ("primary_dimensions",),
        "Sub-dimensions": ("sub_dimensions",),
        "Themes": ("themes",),
        "Subthemes": ("subthemes",),
    }
    for title, (group,) in tables.items():
        for name, tally_a in getattr(a, group).items():
            row = rows[(title, name)]
            assert float(row["difference"]) == pytest.approx(getattr(b, group)[name].accuracy - tally_a.accuracy)
    assert float(rows[("Summary", "Overall")]["difference"]) == pytest.approx(b.overall - a.overall)
    html_page = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "base" in html_page and "tuned" in html_page and "+75.0 pp" in html_page


def test_compare_tables_keeps_rows_only_one_side_has():
    a = [Table("T", (Row("x", 1, 2, 0.5), Row("only a", 1, 1, 1.0)))]
    b = [Table("T", (Row("x", 2, 2, 1.0),)), Table("U", (Row("y", 0, 1, 0.0),))]
    c = compare_tables(a, b, "a", "b")
    diffs = {(r.table, r.name): r.difference for r in c.rows}
    assert diffs == {("T", "x"): 0.5, ("T", "only a"): None, ("U", "y"): None}
    assert "| only a | 100.0% | - | - |" in c.markdown()


# ------------------------------------------------------------------ ToyShapes report files


@pytest.fixture
def toy_report() -> tuple[EvalReport, torch.Tensor]:
    """A report on 2 rendered images per category, the first of each replaced by noise (verified wrong)."""
    prompts = eval_prompts(2)
    images, _ = render_batch(prompts, resolution=32, seed=0)
    images[::2] = torch.rand(images[::2].shape, generator=torch.Generator().manual_seed(0))
    return report_from_images(images, prompts, {"steps": 0, "source": "rendered"}), images


def test_toyshapes_report_files(toy_report, tmp_path):
    report, images = toy_report
    paths = write_toyshapes_reports(report, tmp_path / "toy", images)
    assert all(p.is_file() for p in paths.values())
    tables = read_csv(paths["csv"])
    assert tables == toyshapes_tables(report)
    categories = {row.name: row for row in tables[1].rows}
    for c, acc in report.accuracy.items():
        assert categories[c].accuracy == pytest.approx(acc) and categories[c].total == 2
    assert tables[0].rows[0].accuracy == pytest.approx(report.overall)
    assert f"| Overall |  |  | {100 * report.overall:.1f}% |" in paths["markdown"].read_text()
    parser = _ReportParser()
    parser.feed(paths["html"].read_text())
    assert parser.titles == list(report.accuracy)  # one grid per category, in benchmark order
    assert [judged for _, judged in parser.figures] == [[(r["prompt"], r["correct"])] for r in _by_category(report)]
    for src, _ in parser.figures:
        assert (paths["html"].parent / src).is_file()
    assert load_report(paths["json"]) == report


def _by_category(report: EvalReport) -> list[dict]:
    order = list(dict.fromkeys(r["category"] for r in report.records))
    return [r for c in order for r in report.records if r["category"] == c]


def test_toyshapes_comparison(toy_report, tmp_path):
    report, _ = toy_report
    better = EvalReport(
        {c: 1.0 for c in report.accuracy},
        1.0,
        1.0,
        report.num_images,
        {},
        [dict(r, correct=True) for r in report.records],
    )
    report.save(tmp_path / "a.json")
    better.save(tmp_path / "b.json")
    md = compare_toyshapes(tmp_path / "a.json", tmp_path / "b.json", out_dir=tmp_path / "cmp")
    for c, acc in report.accuracy.items():
        assert f"| {c} | {100 * acc:.1f}% | 100.0% | {100 * (1 - acc):+.1f} pp |" in md
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {
        "comparison.md",
        "comparison.csv",
        "comparison.html",
        "comparison_paired.csv",
        "comparison_paired_score.csv",
    }


# ------------------------------------------------------------------ rendering in a browser


def _browser() -> str | None:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("FLOWRL_BROWSER_TESTS") == "1":
        return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return None


@slow
@pytest.mark.skipif(
    _browser() is None, reason=f"no Chromium at {CHROMIUM} (set FLOWRL_BROWSER_TESTS=1 to look on PATH)"
)
def test_report_renders_in_headless_chromium(written, tmp_path):
    _, _, _, paths = written
    shot = tmp_path / "shot.png"
    # Flags for a root, display-less machine with a closed network and a small /dev/shm (containers).
    command = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        paths["html"].resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 24)
    assert len(colours) > 20, f"screenshot looks blank: {len(colours)} colours"
    present = {c for _, c in colours}
    for colour in COLOURS.values():  # each test image's solid colour is on screen (within rounding)
        assert any(max(abs(a - b) for a, b in zip(colour, p)) <= 8 for p in present), (
            f"image colour {colour} not rendered"
        )


def test_the_leaderboard_row_has_two_decimals_in_the_leaderboard_s_order():
    from flowrl.benchmarks.unigenbench.report import leaderboard_markdown

    r = aggregate(make_prompts(), make_verdicts(), images_per_prompt=2)
    lines = leaderboard_markdown(r, "m").splitlines()
    assert lines[0] == "| Model | Overall | Style | World Knowledge | Attribute |"  # the leaderboard's column order
    assert lines[2] == "| m | 52.78 | 75.00 | 50.00 | 33.33 |"  # 19/36, 3/4, 1/2, 2/6
    assert "- **Attribute** 33.33: Color 50.00 | Quantity 25.00" in lines


def test_compare_warns_when_the_runs_are_not_comparable(tmp_path):
    prompts, verdicts = make_prompts(), make_verdicts()
    for name, judge in (("a", "judge-1"), ("b", "judge-2")):
        meta = {"policy": name, "judge_model": judge, "prompt_file_sha256": "0" * 64, "protocol": "official"}
        write_reports(aggregate(prompts, verdicts, meta=meta), prompts, verdicts, tmp_path / "images", tmp_path / name)
    text = compare_results(tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert text.startswith("> warning: the two runs used different judges (judge-1 vs judge-2)")
    assert "prompt files" not in text and "protocols" not in text
    same = compare_results(tmp_path / "a" / "results.json", tmp_path / "a" / "results.json")
    assert "warning" not in same


def test_the_official_per_image_file_round_trips_and_reads_by_the_official_rule(tmp_path):
    from flowrl.benchmarks.unigenbench.interop import COLUMNS, read_official_results, write_official_results
    from flowrl.benchmarks.unigenbench.store import JudgmentStore

    prompts, verdicts = make_prompts(), make_verdicts()
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        for image in sorted({v.image for v in verdicts}):
            mine = [v for v in verdicts if v.image == image]
            store.record(image, mine[0].prompt_index, mine, model="m", raw=f"answer for {image}")
        path = write_official_results(tmp_path / "official.csv", prompts, store.verdicts(), store, tmp_path / "img")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == COLUMNS and rows[1][0] == "0" and rows[1][3] == "answer for 0_0.png"
    assert rows[1][2] == str([p.name for p in prompts[0].testpoints])  # the Python list, as the official file
    key = lambda v: (v.image, v.testpoint)  # noqa: E731
    assert sorted(read_official_results(path), key=key) == sorted(verdicts, key=key)
    # written by the official scripts: a failed image (null), booleans (not literals) and a string score
    official = tmp_path / "theirs.csv"
    with open(official, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        result = {"prompt": "p", "testpoint": ["Style", "Grammar"], "analysis": ["a", "b"], "score": [1, "1"]}
        writer.writerow(["3", "p", "['Style', 'Grammar']", "x", json.dumps(result, indent=4), "eval_data/en/m/3_0.png"])
        writer.writerow(["3", "p", "['Style', 'Grammar']", "", "null", "eval_data/en/m/3_1.png"])
        booleans = json.dumps({**result, "score": [True, False]}, indent=4)
        writer.writerow(["3", "p", "['Style', 'Grammar']", "x", booleans, "eval_data/en/m/3_2.png"])
    assert read_official_results(official) == [
        Verdict("3_0.png", 3, "Style", True, "a"),
        Verdict("3_0.png", 3, "Grammar", False, "b"),  # '1' is not 1
    ]


def test_compare_pairs_the_verdicts_of_two_runs_per_dimension(tmp_path):
    from flowrl.benchmarks.unigenbench.interop import write_official_results
    from flowrl.benchmarks.unigenbench.store import JudgmentStore

    prompts = make_prompts()
    flipped = [  # run B gets every Style verdict right, the rest as run A
        Verdict(v.image, v.prompt_index, v.testpoint, True if v.testpoint == STYLE else v.correct, v.explanation)
        for v in make_verdicts()
    ]
    for name, verdicts in (("a", make_verdicts()), ("b", flipped)):
        with JudgmentStore(tmp_path / f"{name}.sqlite") as store:
            for image in sorted({v.image for v in verdicts}):
                mine = [v for v in verdicts if v.image == image]
                store.record(image, mine[0].prompt_index, mine, model="m", raw="")
            write_official_results(tmp_path / name / "official_results.csv", prompts, verdicts, store, tmp_path)
        write_reports(aggregate(prompts, verdicts, meta={"policy": name}), prompts, verdicts, tmp_path, tmp_path / name)
    text = compare_results(tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    # Style: 3 of 4 right in A, 4 of 4 in B: one pair where only B is right, +25 pp; the others unchanged
    assert "| Style | 4 | +25.0 pp |" in text and "| World Knowledge | 2 | +0.0 pp |" in text
    assert "Verdict by verdict on the 12 (image, test point) pairs" in text
