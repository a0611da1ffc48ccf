"""Paired comparison of two evaluations of the same items (same prompts, and when the seeds are
shared the same starting noise): the accuracy difference with a 95% interval and an exact
McNemar test, so a before/after table says whether a difference exceeds its noise.

Only the items the two evaluations judge differently carry information about the difference
(McNemar): under no difference each of them is equally likely to favour either side. The
interval is Agresti and Min's (2005): the Wald interval of the paired difference after adding
half an item to each cell of the 2x2 table, which keeps its coverage near 95% even when few or
no items are discordant (where the plain Wald interval collapses to a point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

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
        raise ValueError(f"{name}: a paired comparison needs the same non-zero number of items, got {len(a)} and {len(b)}")
    d = [int(bool(y)) - int(bool(x)) for x, y in zip(a, b)]
    n, a_only, b_only = len(d), d.count(-1), d.count(1)
    centre, variance = _adjusted(n, a_only, b_only)
    half = Z95 * math.sqrt(variance)
    return PairedDifference(name, n, sum(d) / n, centre - half, centre + half, a_only, b_only, mcnemar_p(a_only, b_only))


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
    return PairedDifference(name, sum(p.n for p in parts), difference, centre - half, centre + half, a_only, b_only, p_value)
