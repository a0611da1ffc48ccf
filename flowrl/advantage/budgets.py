"""Rollout budgets across prompts: Knapsack RL (arXiv 2509.25849). A prompt with success rate p
sampled N times is worth (1 - p^N - (1-p)^N) * p (1-p)^2: the chance that its group is not tied
(so it has a gradient) times the paper's information gain. The budgets maximise the sum of the
values for a fixed total; groups become ragged."""

from __future__ import annotations

import heapq


def knapsack_value(n: int, p: float) -> float:
    """Knapsack RL's value of sampling a prompt of success rate p n times."""
    return (1.0 - p**n - (1.0 - p) ** n) * p * (1.0 - p) ** 2


def knapsack_budgets(success_rates: list[float], total: int, low: int, high: int) -> list[int]:
    """Samples per prompt, each in [low, high], summing to `total`, that maximise the summed value.

    The value's gain from one more sample, p^N (1-p) + (1-p)^N p, falls as N grows, so handing
    out samples one at a time to the largest gain is optimal (the knapsack with concave values).
    Samples no value asks for (every p at 0 or 1) go first to prompts never solved (p = 0: a
    success there would teach most), then round-robin, as the paper's fallback does."""
    count = len(success_rates)
    if count == 0:
        return []
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low!r}, high={high!r}")
    if not count * low <= total <= count * high:
        raise ValueError(f"a total of {total} samples cannot give {count} prompts between {low} and {high} each")
    bad = [p for p in success_rates if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"success rates must lie in [0, 1], got {bad[:5]}")
    budgets = [low] * count
    left = total - count * low

    def gain(i: int) -> float:
        return knapsack_value(budgets[i] + 1, success_rates[i]) - knapsack_value(budgets[i], success_rates[i])

    heap = [(-gain(i), i) for i in range(count) if budgets[i] < high]
    heapq.heapify(heap)
    while left and heap and -heap[0][0] > 0:
        _, i = heapq.heappop(heap)
        budgets[i] += 1
        left -= 1
        if budgets[i] < high:
            heapq.heappush(heap, (-gain(i), i))
    unsolved = [i for i in range(count) if success_rates[i] == 0.0]
    for order in (unsolved, list(range(count))):
        while left and any(budgets[i] < high for i in order):
            for i in order:
                if left and budgets[i] < high:
                    budgets[i] += 1
                    left -= 1
    return budgets
