"""Paired comparisons of two evaluations (benchmarks/paired.py) against independent references:
scipy's binomial test for McNemar, Agresti and Min's interval from its 2x2-table formula, the
interval's coverage by simulation, and a brute-force sign-flip enumeration for the overall test
of unequal groups; and the ToyShapes comparison that uses them."""

from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from benchmarks.paired import mcnemar_p, mean_of_groups, paired_difference
from benchmarks.toyshapes.evaluate import EvalReport
from benchmarks.toyshapes.report import compare_toyshapes, paired_toyshapes


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 1), (3, 3), (2, 9), (9, 2), (0, 12), (17, 30), (1, 40)])
def test_mcnemar_is_the_fair_coin_binomial_test_on_the_discordant_items(a_only, b_only):
    expected = 1.0 if a_only + b_only == 0 else binomtest(b_only, a_only + b_only, 0.5).pvalue
    assert mcnemar_p(a_only, b_only) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="-1"):
        mcnemar_p(-1, 3)


def _agresti_min(table: np.ndarray) -> tuple[float, float]:
    """The interval from the 2x2 table [[both right, only A], [only B, both wrong]] plus 1/2 per cell."""
    t = table + 0.5
    n = t.sum()
    p12, p21 = t[0, 1] / n, t[1, 0] / n
    centre = p21 - p12
    half = 1.959963984540054 * math.sqrt((p12 + p21 - centre**2) / n)
    return centre - half, centre + half


def test_paired_difference_against_the_two_by_two_table():
    rng = np.random.default_rng(0)
    a, b = rng.random(40) < 0.4, rng.random(40) < 0.6
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]], dtype=float)
    result = paired_difference("x", a.tolist(), b.tolist())
    assert result.n == 40 and result.difference == pytest.approx(b.mean() - a.mean())
    assert (result.a_only, result.b_only) == (int(table[0, 1]), int(table[1, 0]))
    assert result.interval == pytest.approx(_agresti_min(table))
    assert result.p_value == pytest.approx(binomtest(result.b_only, result.a_only + result.b_only, 0.5).pvalue)


def test_identical_evaluations_differ_by_nothing_yet_keep_an_interval():
    same = [True, False, True, True]
    result = paired_difference("x", same, same)
    assert (result.difference, result.a_only, result.b_only, result.p_value) == (0.0, 0, 0, 1.0)
    assert result.low == pytest.approx(-result.high) and 0.05 < result.high < 0.5  # not a point: 4 items say little


@pytest.mark.parametrize("p_a,p_b,correlation", [(0.4, 0.55, 0.6), (0.1, 0.1, 0.3), (0.05, 0.2, 0.0)])
def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time(p_a, p_b, correlation):
    """Correlated pairs (shared noise) of 32 items, as one ToyShapes category."""
    rng = np.random.default_rng(1)
    covered, runs = 0, 2000
    for _ in range(runs):
        shared = rng.random(32)
        own_a, own_b = rng.random(32), rng.random(32)
        a = np.where(rng.random(32) < correlation, shared, own_a) < p_a
        b = np.where(rng.random(32) < correlation, shared, own_b) < p_b
        low, high = paired_difference("x", a.tolist(), b.tolist()).interval
        covered += low <= p_b - p_a <= high
    assert 0.92 <= covered / runs <= 0.995


@pytest.mark.parametrize("a,b", [([True], [True, False]), ([], [])])
def test_paired_difference_needs_matching_non_empty_items(a, b):
    with pytest.raises(ValueError, match=f"got {len(a)} and {len(b)}"):
        paired_difference("cat", a, b)


def test_equal_groups_pool_into_one_mcnemar_test():
    g1 = paired_difference("g1", [True, True, False, False], [False, True, True, True])
    g2 = paired_difference("g2", [True, False, False, False], [True, True, True, False])
    overall = mean_of_groups("Overall", [g1, g2])
    assert overall.difference == pytest.approx((g1.difference + g2.difference) / 2)
    centres = [(l + h) / 2 for l, h in (g1.interval, g2.interval)]
    halves = [(h - l) / 2 for l, h in (g1.interval, g2.interval)]
    assert (overall.low + overall.high) / 2 == pytest.approx(sum(centres) / 2)  # means of independent groups:
    assert (overall.high - overall.low) / 2 == pytest.approx(math.hypot(*halves) / 2)  # variances add
    assert (overall.a_only, overall.b_only) == (1, 4)
    assert overall.p_value == pytest.approx(binomtest(4, 5, 0.5).pvalue)


def test_unequal_groups_match_the_exact_sign_flip_test_approximately():
    """With unequal groups the test is a normal approximation; an exhaustive enumeration of the
    discordant items' signs (each equally likely to favour A or B under no difference) is exact."""
    a1, b1 = [False] * 6 + [True] * 2 + [True] * 4, [True] * 6 + [False] * 2 + [True] * 4  # n 12: 6 for B, 2 for A
    a2, b2 = [False] * 5 + [True] * 1 + [False] * 24, [True] * 5 + [False] * 1 + [False] * 24  # n 30: 5 for B, 1 for A
    parts = [paired_difference("g1", a1, b1), paired_difference("g2", a2, b2)]
    overall = mean_of_groups("Overall", parts)
    weights = [1 / 12] * 8 + [1 / 30] * 6  # each discordant item's move of the summed group means
    observed = (6 - 2) / 12 + (5 - 1) / 30
    extreme = sum(abs(sum(s * w for s, w in zip(signs, weights))) >= observed - 1e-12 for signs in itertools.product((-1, 1), repeat=len(weights)))
    exact = extreme / 2 ** len(weights)
    assert overall.difference == pytest.approx(observed / 2)
    assert overall.p_value == pytest.approx(exact, abs=0.03)


def _report(correct_by_category: dict[str, list[bool]], seed: int = 0) -> EvalReport:
    records = [{"prompt": f"{c} {i}", "category": c, "correct": ok, "score": float(ok)}
               for c, values in correct_by_category.items() for i, ok in enumerate(values)]
    accuracy = {c: sum(v) / len(v) for c, v in correct_by_category.items()}
    settings = {"images_per_category": len(next(iter(correct_by_category.values()))), "seed": seed, "split": "heldout"}
    return EvalReport(accuracy, sum(accuracy.values()) / len(accuracy), 0.5, len(records), settings, records)


def test_toyshapes_comparison_reports_paired_tests(tmp_path):
    a = _report({"single_object": [True, False, False, False], "counting": [True, True, False, False]})
    b = _report({"single_object": [True, True, True, False], "counting": [False, True, False, True]})
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    markdown = compare_toyshapes(tmp_path / "a.json", tmp_path / "b.json", out_dir=tmp_path / "cmp")
    assert "the same prompts and starting noise" in markdown
    # single_object: 2 images only B got right, none only A: +50 pp, p = 2 * 0.5^2
    single = paired_difference("single_object", [True, False, False, False], [True, True, True, False])
    low, high = single.interval
    assert f"| single_object | 4 | +50.0 pp | {100 * low:+.1f} to {100 * high:+.1f} pp | 0 | 2 | 0.500 |" in markdown
    assert "| counting | 4 | +0.0 pp |" in markdown and "| 1 | 1 | 1.000 |" in markdown
    assert "| Overall | 8 | +25.0 pp |" in markdown and f"| 1 | 3 | {binomtest(3, 4, 0.5).pvalue:.3f} |" in markdown
    with (tmp_path / "cmp" / "comparison_paired.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["single_object", "counting", "Overall"]
    assert float(rows[0]["difference"]) == 0.5 and float(rows[0]["low"]) == pytest.approx(low)
    assert "Paired test" in (tmp_path / "cmp" / "comparison.html").read_text()


def test_toyshapes_comparison_says_why_it_cannot_pair():
    a = _report({"single_object": [True, False]})
    longer = _report({"single_object": [True, False, True]})
    other_seed = _report({"single_object": [False, True]}, seed=1)
    renamed = EvalReport(a.accuracy, a.overall, a.mean_score, a.num_images, a.settings, [dict(r, prompt="x") for r in a.records])
    assert paired_toyshapes(a, longer) == ((), "No paired test: the reports judged different images (2 and 3 images); evaluate both with the same settings.")
    tests, note = paired_toyshapes(a, renamed)
    assert tests == () and "image 0 is 'single_object 0' in A and 'x' in B" in note
    tests, note = paired_toyshapes(a, other_seed)  # same prompts, other noise: still paired, and said so
    assert len(tests) == 2 and "starting noise not known to be shared" in note
    bare = EvalReport(a.accuracy, a.overall, a.mean_score, a.num_images, a.settings, [])
    assert paired_toyshapes(a, bare) == ((), "No paired test: a report was saved without its per-image records.")
