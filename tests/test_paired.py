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
from scipy.stats import binomtest, ttest_rel

from flowrl.benchmarks.paired import (
    mcnemar_p,
    mean_of_groups,
    mean_of_score_groups,
    paired_difference,
    paired_mean_difference,
)
from flowrl.benchmarks.toyshapes.evaluate import EvalReport
from flowrl.benchmarks.toyshapes.report import compare_toyshapes, paired_toyshapes, paired_toyshapes_scores


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
    extreme = sum(
        abs(sum(s * w for s, w in zip(signs, weights))) >= observed - 1e-12
        for signs in itertools.product((-1, 1), repeat=len(weights))
    )
    exact = extreme / 2 ** len(weights)
    assert overall.difference == pytest.approx(observed / 2)
    assert overall.p_value == pytest.approx(exact, abs=0.03)


def _report(correct_by_category: dict[str, list[bool]], seed: int = 0) -> EvalReport:
    records = [
        {"prompt": f"{c} {i}", "category": c, "correct": ok, "score": float(ok)}
        for c, values in correct_by_category.items()
        for i, ok in enumerate(values)
    ]
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
    renamed = EvalReport(
        a.accuracy, a.overall, a.mean_score, a.num_images, a.settings, [dict(r, prompt="x") for r in a.records]
    )
    assert paired_toyshapes(a, longer) == (
        (),
        "No paired test: the reports judged different images (2 and 3 images); evaluate both with the same settings.",
    )
    tests, note = paired_toyshapes(a, renamed)
    assert tests == () and "image 0 is 'single_object 0' in A and 'x' in B" in note
    tests, note = paired_toyshapes(a, other_seed)  # same prompts, other noise: still paired, and said so
    assert len(tests) == 2 and "starting noise not known to be shared" in note
    bare = EvalReport(a.accuracy, a.overall, a.mean_score, a.num_images, a.settings, [])
    assert paired_toyshapes(a, bare) == ((), "No paired test: a report was saved without its per-image records.")


# --- graded scores (the dense score) -------------------------------------------------------------


def test_paired_score_difference_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 40)
    b = np.clip(a + rng.normal(0.05, 0.1, 40), 0, 1)
    d = paired_mean_difference("x", a.tolist(), b.tolist())
    reference = ttest_rel(b, a)
    interval = reference.confidence_interval(0.95)
    assert d.n == 40 and d.difference == pytest.approx(float(np.mean(b - a)), abs=1e-12)
    assert (d.low, d.high) == (pytest.approx(interval.low, abs=1e-12), pytest.approx(interval.high, abs=1e-12))
    assert d.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert (d.a_only, d.b_only) == (int(np.sum(b < a)), int(np.sum(b > a)))


def test_paired_score_difference_of_equal_scores_and_bad_input():
    same = paired_mean_difference("x", [0.5, 1.0, 0.0], [0.5, 1.0, 0.0])
    assert (same.difference, same.low, same.high, same.p_value, same.a_only, same.b_only) == (0.0, 0.0, 0.0, 1.0, 0, 0)
    shifted = paired_mean_difference("x", [0.5, 0.2], [0.6, 0.3])  # every item up by exactly 0.1
    assert shifted.difference == pytest.approx(0.1) and shifted.p_value == 0.0
    with pytest.raises(ValueError, match="x: .*at least 2.*got 2 and 3"):
        paired_mean_difference("x", [0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no groups"):
        mean_of_score_groups("Overall", [])


def test_score_groups_combine_as_a_stratified_mean():
    # Overall = mean of the groups' mean differences; its variance the sum of their squared
    # standard errors over G^2 (computed here with numpy), normal interval and p-value.
    rng = np.random.default_rng(1)
    groups = [(rng.uniform(0, 1, n), rng.uniform(0, 1, n)) for n in (30, 50, 80)]
    overall = mean_of_score_groups("Overall", [(a.tolist(), b.tolist()) for a, b in groups])
    means = [np.mean(b - a) for a, b in groups]
    se = math.sqrt(sum(np.var(b - a, ddof=1) / len(a) for a, b in groups)) / 3
    assert overall.difference == pytest.approx(np.mean(means), abs=1e-12)
    assert overall.high - overall.difference == pytest.approx(1.959963984540054 * se, rel=1e-9)
    assert overall.p_value == pytest.approx(math.erfc(abs(np.mean(means)) / se / math.sqrt(2)), rel=1e-9)
    assert overall.n == 160


def test_the_stratified_score_interval_covers_the_true_difference():
    # Three groups of unequal size, scores that rise by a different amount per group: the
    # interval of the unweighted mean over groups covers the true mean shift about 95% of the time.
    rng = np.random.default_rng(2)
    shifts, sizes = (0.10, -0.05, 0.02), (24, 48, 96)
    truth = sum(shifts) / 3
    covered = 0
    for _ in range(1000):
        groups = []
        for shift, n in zip(shifts, sizes):
            a = rng.uniform(0, 1, n)
            groups.append((a.tolist(), (a + shift + rng.normal(0, 0.2, n)).tolist()))
        d = mean_of_score_groups("Overall", groups)
        covered += d.low <= truth <= d.high
    assert 0.93 <= covered / 1000 <= 0.97


def test_toyshapes_comparison_reports_the_paired_dense_score(tmp_path):
    a = _report({"single_object": [True, False, False, False], "counting": [True, True, False, False]})
    b = _report({"single_object": [True, True, True, False], "counting": [False, True, False, True]})
    scores_b = [1.0, 0.5, 0.75, 0.25, 0.5, 1.0, 0.0, 1.0]
    b = EvalReport(
        b.accuracy,
        b.overall,
        b.mean_score,
        b.num_images,
        b.settings,
        [dict(r, score=s) for r, s in zip(b.records, scores_b)],
    )
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    markdown = compare_toyshapes(tmp_path / "a.json", tmp_path / "b.json", out_dir=tmp_path / "cmp")
    single = paired_mean_difference("single_object", [1.0, 0.0, 0.0, 0.0], scores_b[:4])  # +0.375
    counting = paired_mean_difference("counting", [1.0, 1.0, 0.0, 0.0], scores_b[4:])  # -0.5, 0, 0, +1: +0.125
    assert "### Paired score" in markdown and "Mean dense score" in markdown
    assert (
        f"| single_object | 4 | +0.375 | {single.low:+.3f} to {single.high:+.3f} | 0 | 3 | {single.p_value:.3f} |"
        in markdown
    )
    assert (
        f"| counting | 4 | +0.125 | {counting.low:+.3f} to {counting.high:+.3f} | 1 | 1 | {counting.p_value:.3f} |"
        in markdown
    )
    assert "| Overall | 8 | +0.250 |" in markdown
    with open(tmp_path / "cmp" / "comparison_paired_score.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["single_object", "counting", "Overall"]
    assert float(rows[0]["difference"]) == pytest.approx(0.375) and float(rows[2]["difference"]) == pytest.approx(0.25)
    assert "Paired score" in (tmp_path / "cmp" / "comparison.html").read_text()
    unscored = EvalReport(
        a.accuracy,
        a.overall,
        a.mean_score,
        a.num_images,
        a.settings,
        [{k: v for k, v in r.items() if k != "score"} for r in a.records],
    )
    assert paired_toyshapes_scores(unscored, b) == ((), "No paired score: a report's records have no dense score.")
    one_each = _report({"single_object": [True], "counting": [False]})
    assert paired_toyshapes_scores(one_each, one_each) == ((), "No paired score: a category has fewer than 2 images.")
    longer = _report({"single_object": [True, False, True]})
    tests, note = paired_toyshapes_scores(a, longer)
    assert tests == () and note.startswith("No paired score: the reports judged different images")
