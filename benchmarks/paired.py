"""Paired comparison of two evaluations of the same items (same prompts, and when the seeds are
shared the same starting noise): the accuracy difference with a 95% interval and an exact
McNemar test, so a before/after table says whether a difference exceeds its noise.

Only the items the two evaluations judge differently carry information about the difference
(McNemar): under no difference each of them is equally likely to favour either side. The
interval is Agresti and Min's (2005): the Wald interval of the paired difference after adding
half an item to each cell of the 2x2 table, which keeps its coverage near 95% even when few or
no items are discordant (where the plain Wald interval collapses to a point).

A graded score per item (ToyShapes' dense score) is compared by its mean paired difference, with
Student's t interval and paired t-test per group and a normal approximation over groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class PairedDifference:
    """B - A over n paired items.

    difference: mean of b_i - a_i (accuracy B minus accuracy A); low, high: its 95% interval;
    a_only / b_only: items only A / only B got right; p_value: two-sided, of no difference.
    """

    name: str
    n: int
    difference: float
    low: float
    high: float
    a_only: int
    b_only: int
    p_value: float

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the chance, if both sides were equally good, of a split of
    the discordant items at least this uneven (a fair-coin binomial test on them)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _adjusted(n: int, a_only: int, b_only: int) -> tuple[float, float]:
    """Agresti-Min's centre and variance of the paired difference: half an item added to each
    of the four cells (n + 2 items in all)."""
    total = n + 2
    p_a, p_b = (a_only + 0.5) / total, (b_only + 0.5) / total
    centre = p_b - p_a
    return centre, (p_a + p_b - centre**2) / total


def paired_difference(name: str, a: Sequence[bool], b: Sequence[bool]) -> PairedDifference:
    """B - A over items judged right (True) or wrong by both evaluations, item i against item i."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"{name}: a paired comparison needs the same non-zero number of items, got {len(a)} and {len(b)}"
        )
    d = [int(bool(y)) - int(bool(x)) for x, y in zip(a, b)]
    n, a_only, b_only = len(d), d.count(-1), d.count(1)
    centre, variance = _adjusted(n, a_only, b_only)
    half = Z95 * math.sqrt(variance)
    return PairedDifference(
        name, n, sum(d) / n, centre - half, centre + half, a_only, b_only, mcnemar_p(a_only, b_only)
    )


def mean_of_groups(name: str, parts: Sequence[PairedDifference]) -> PairedDifference:
    """The difference of the mean accuracy over groups (GenEval's overall), each group weighted
    equally whatever its size. Groups hold different items, so the (adjusted) variances add.

    p-value: with equal group sizes the overall difference is the pooled discordant split, so the
    exact McNemar test applies; otherwise a normal approximation under no difference (each
    discordant item of group g moves the mean by +-1 / (G n_g) with equal chance).
    """
    if not parts:
        raise ValueError(f"{name}: no groups to combine")
    groups = len(parts)
    difference = sum(p.difference for p in parts) / groups
    adjusted = [_adjusted(p.n, p.a_only, p.b_only) for p in parts]
    centre = sum(c for c, _ in adjusted) / groups
    half = Z95 * math.sqrt(sum(v for _, v in adjusted)) / groups
    a_only, b_only = sum(p.a_only for p in parts), sum(p.b_only for p in parts)
    if len({p.n for p in parts}) == 1:
        p_value = mcnemar_p(a_only, b_only)
    else:
        null_sd = math.sqrt(sum((p.a_only + p.b_only) / p.n**2 for p in parts)) / groups
        p_value = 1.0 if null_sd == 0 else math.erfc(abs(difference) / null_sd / math.sqrt(2))
    return PairedDifference(
        name, sum(p.n for p in parts), difference, centre - half, centre + half, a_only, b_only, p_value
    )


def _mean_and_standard_error(name: str, a: Sequence[float], b: Sequence[float]) -> tuple[float, float, list[float]]:
    """Mean of b_i - a_i, its standard error (sample variance / n) and the differences."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"{name}: a paired comparison of scores needs the same number (at least 2) of items, got {len(a)} and {len(b)}"
        )
    d = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n), d


def paired_mean_difference(name: str, a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """B - A of a graded score (such as ToyShapes' dense score) over paired items: the mean of
    b_i - a_i with Student's t 95% interval and the two-sided paired t-test p-value. a_only /
    b_only count the items A / B scored higher."""
    from scipy.stats import t as student_t

    mean, se, d = _mean_and_standard_error(name, a, b)
    half = float(student_t.ppf(0.975, len(d) - 1)) * se
    p_value = (1.0 if mean == 0 else 0.0) if se == 0 else float(2 * student_t.sf(abs(mean) / se, len(d) - 1))
    return PairedDifference(
        name, len(d), mean, mean - half, mean + half, sum(v < 0 for v in d), sum(v > 0 for v in d), p_value
    )


def mean_of_score_groups(name: str, groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> PairedDifference:
    """B - A of the mean score over groups, each weighted equally (like `mean_of_groups`): the
    groups hold different items, so the variance is the sum of their squared standard errors
    over G^2; normal interval and p-value."""
    if not groups:
        raise ValueError(f"{name}: no groups to combine")
    stats = [_mean_and_standard_error(name, a, b) for a, b in groups]
    count = len(stats)
    difference = sum(mean for mean, _, _ in stats) / count
    se = math.sqrt(sum(e**2 for _, e, _ in stats)) / count
    p_value = (1.0 if difference == 0 else 0.0) if se == 0 else math.erfc(abs(difference) / se / math.sqrt(2))
    lower = sum(sum(v < 0 for v in d) for _, _, d in stats)
    higher = sum(sum(v > 0 for v in d) for _, _, d in stats)
    return PairedDifference(
        name,
        sum(len(d) for _, _, d in stats),
        difference,
        difference - Z95 * se,
        difference + Z95 * se,
        lower,
        higher,
        p_value,
    )
