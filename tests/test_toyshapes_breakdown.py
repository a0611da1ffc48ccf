"""The failure breakdown of a ToyShapes evaluation, on scenes rendered to fail at a known stage."""

import pytest
import torch

from flowrl.benchmarks.toyshapes.breakdown import FIELDS, breakdown, breakdown_table, diagnose
from flowrl.benchmarks.toyshapes.evaluate import EvalReport, report_from_images
from flowrl.benchmarks.toyshapes.prompts import parse_prompt
from flowrl.benchmarks.toyshapes.render import render, render_batch
from flowrl.benchmarks.toyshapes.scene import assess

# (scene drawn, prompt asked, stages by construction: found, shapes, objects, relation, copied, correct)
CASES = [
    ("a circle left of a square", "a circle left of a square", (2, True, True, True, False, True)),
    ("a square left of a circle", "a circle left of a square", (2, True, True, False, False, False)),
    ("two circles", "a circle left of a square", (2, False, False, False, True, False)),
    ("a circle", "a circle and a square", (1, False, False, None, False, False)),
    ("two circles", "a circle and a square", (2, False, False, None, True, False)),
    ("a square and a circle", "a circle and a square", (2, True, True, None, False, True)),
    ("a triangle and a square", "a circle and a square", (2, False, False, None, False, False)),  # a shape not asked
    ("three circles", "two circles", (3, False, False, None, None, False)),  # one shape asked: copied does not apply
    ("a red circle and a blue square", "a blue circle and a red square", (2, True, False, None, False, False)),
    ("a blue circle and a red square", "a blue circle and a red square", (2, True, True, None, False, True)),
]
PER_CASE = 3


def test_diagnose_on_true_scenes_matches_construction():
    for drawn, asked, (found, shapes, objects, relation, copied, correct) in CASES:
        for seed in range(PER_CASE):
            _, scene = render(parse_prompt(drawn), 32, seed)
            prompt = parse_prompt(asked)
            assessment = assess(scene, prompt, 32)
            stages = diagnose(scene, prompt, assessment)
            assert stages == {
                "found": found,
                "shapes_ok": shapes,
                "objects_ok": objects,
                "relation_ok": relation,
                "copied": copied,
            }, (drawn, asked, seed)
            assert assessment.correct == correct, (drawn, asked, seed)


@pytest.fixture(scope="module")
def report():
    drawn = [parse_prompt(d) for d, _, _ in CASES for _ in range(PER_CASE)]
    asked = [parse_prompt(a) for _, a, _ in CASES for _ in range(PER_CASE)]
    images, _ = render_batch(drawn, 32, seed=3)
    return report_from_images(images, asked)


def test_records_hold_the_stages_the_verifier_finds(report):
    expected = [stages for _, _, stages in CASES for _ in range(PER_CASE)]
    got = [
        (r["found"], r["shapes_ok"], r["objects_ok"], r["relation_ok"], r["copied"], r["correct"])
        for r in report.records
    ]
    assert got == expected


def test_breakdown_counts_each_category_by_hand(report):
    rows = breakdown(report.records)
    assert list(rows) == ["two_object", "counting", "position", "color_attr"]  # benchmark order
    # position: cases 1-3 (right; reversed relation; two circles), 3 images each.
    assert rows["position"] == {
        "too_few": (0, 9),
        "right_count": (9, 9),
        "too_many": (0, 9),
        "right_shapes": (6, 9),
        "copied": (3, 9),
        "right_objects": (6, 9),
        "relation": (3, 6),
        "correct": (3, 9),
    }
    # two objects: one circle (too few), two circles (copied), the right two in the other order, a triangle for the circle.
    assert rows["two_object"] == {
        "too_few": (3, 12),
        "right_count": (9, 12),
        "too_many": (0, 12),
        "right_shapes": (3, 12),
        "copied": (3, 12),
        "right_objects": (3, 12),
        "relation": (0, 0),
        "correct": (3, 12),
    }
    assert rows["counting"]["too_many"] == (3, 3) and rows["counting"]["right_shapes"] == (0, 3)
    assert rows["counting"]["copied"] == (0, 0)  # asks for one shape only
    assert rows["color_attr"]["copied"] == (0, 6)
    assert rows["color_attr"]["right_shapes"] == (6, 6) and rows["color_attr"]["right_objects"] == (3, 6)
    assert rows["color_attr"]["correct"] == (3, 6)


def test_table_shows_percentages_and_dashes(report):
    lines = breakdown_table(report.records).splitlines()
    assert lines[0].split()[0] == "category" and len(lines) == 5
    position = lines[3].split()
    assert position[0] == "position" and position[-1] == "9"
    assert position[1:9] == ["0.0%", "100.0%", "0.0%", "66.7%", "33.3%", "66.7%", "50.0%", "33.3%"]
    assert lines[1].split()[7] == "-"  # two_object: no relation asked
    assert lines[2].split()[5] == "-"  # counting: one shape asked, so no shape can stand in for another
    assert report.breakdown_table() == breakdown_table(report.records)


def without_stages(report: EvalReport) -> EvalReport:
    """The same report as one saved before the stages existed."""
    records = [{k: v for k, v in r.items() if k not in FIELDS} for r in report.records]
    return EvalReport(report.accuracy, report.overall, report.mean_score, report.num_images, {}, records)


def test_records_without_stages_fail_naming_the_fields(report):
    old = without_stages(report)
    with pytest.raises(ValueError, match="shapes_ok"):
        old.breakdown_table()


def test_report_from_images_checks_lengths():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        report_from_images(torch.zeros(2, 3, 32, 32), [parse_prompt("a circle")])


def test_report_files_and_comparisons_carry_the_stages(report, tmp_path):
    from flowrl.benchmarks.report import read_csv
    from flowrl.benchmarks.toyshapes.report import STAGE_TITLES, compare_toyshapes, write_toyshapes_reports

    paths = write_toyshapes_reports(report, tmp_path / "r")
    tables = {t.title: {row.name: (row.correct, row.total) for row in t.rows} for t in read_csv(paths["csv"])}
    stages = breakdown(report.records)
    for stage, title in STAGE_TITLES.items():
        assert tables[title] == {c: row[stage] for c, row in stages.items() if row[stage][1]}
    assert list(tables[STAGE_TITLES["relation"]]) == ["position"]  # the only category whose prompts ask one
    assert list(tables[STAGE_TITLES["copied"]]) == ["two_object", "position", "color_attr"]
    assert "| position | 6 | 9 | 66.7% |" in paths["markdown"].read_text()
    # An older report without the stages still compares: its side of those rows is empty.
    old = without_stages(report)
    report.save(tmp_path / "new.json")
    old.save(tmp_path / "old.json")
    text = compare_toyshapes(tmp_path / "old.json", tmp_path / "new.json")
    assert STAGE_TITLES["right_shapes"] in text
