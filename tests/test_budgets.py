"""Knapsack RL's rollout budgets (arXiv 2509.25849) against its value written out and against a
brute-force search over every allocation; a text run with ragged groups."""

import itertools
import math

import pytest

from conftest import metric_records
from flowrl.advantage import knapsack_budgets, knapsack_value
from flowrl.config import build_config
from flowrl.llm.method import TextGrpoOptions
from flowrl.llm.rewards import TEXT_REWARDS, register_text_reward
from flowrl.llm.tiny import save_tiny
from flowrl.trainer import train


def test_the_value_is_the_chance_of_a_gradient_times_the_information_gain():
    p, n = 0.3, 5
    not_tied = 1 - 0.3**5 - 0.7**5  # neither all right nor all wrong
    assert knapsack_value(n, p) == pytest.approx(not_tied * 0.3 * 0.7**2, rel=1e-12)
    assert knapsack_value(8, 0.0) == 0.0 and knapsack_value(8, 1.0) == 0.0


@pytest.mark.parametrize(
    "rates,total,low,high",
    [([0.1, 0.5, 0.9, 0.02], 16, 2, 8), ([0.3, 0.3, 0.7], 12, 1, 9), ([0.05, 0.6, 0.95, 0.4, 0.25], 20, 2, 6)],
)
def test_the_budgets_reach_the_best_total_value_of_any_allocation(rates, total, low, high):
    budgets = knapsack_budgets(rates, total, low, high)
    assert sum(budgets) == total and all(low <= b <= high for b in budgets)
    best = max(
        sum(knapsack_value(n, p) for n, p in zip(choice, rates))
        for choice in itertools.product(range(low, high + 1), repeat=len(rates))
        if sum(choice) == total
    )
    assert sum(knapsack_value(n, p) for n, p in zip(budgets, rates)) == pytest.approx(best, rel=1e-12)


def test_hard_prompts_get_more_than_easy_ones_and_solved_ones_the_least():
    budgets = knapsack_budgets([0.05, 0.5, 0.99, 1.0], 32, 2, 24)
    assert budgets[3] == 2 and budgets[0] > budgets[1] > budgets[2] >= 2


def test_samples_no_value_asks_for_go_to_unsolved_prompts_first():
    assert knapsack_budgets([1.0, 0.0, 1.0, 0.0], 16, 2, 6) == [2, 6, 2, 6]
    assert knapsack_budgets([1.0, 1.0], 6, 2, 4) == [3, 3]  # then round-robin


def test_bad_budgets_are_refused_naming_the_values():
    with pytest.raises(ValueError, match="a total of 5 samples cannot give 3 prompts"):
        knapsack_budgets([0.5] * 3, 5, 2, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[1.5\]"):
        knapsack_budgets([0.5, 1.5], 4, 2, 2)
    with pytest.raises(ValueError, match="budget_min <= num_generations <= budget_max"):
        TextGrpoOptions(num_generations=4, budget_min=5)
    with pytest.raises(ValueError, match="resample_rounds=0"):
        TextGrpoOptions(budget="knapsack", resample_rounds=1)
    assert TextGrpoOptions(num_generations=4).budget_max == 16


def test_a_text_run_with_knapsack_budgets_trains_on_ragged_groups(tmp_path):
    @register_text_reward("test_even_length")
    def even_length(prompts, completions, **kwargs):
        return [float(len(c) % 2 == 0) for c in completions]

    config = dict(
        out=str(tmp_path / "run"), policy=str(save_tiny(tmp_path / "lm")), method="grpo", objective="tokens",
        prompts="task:add2x1", reward="test_even_length", iterations=2,
        prompts_per_iteration=4, lr=1e-3, eval_every=0, minutes=0, threads=1,
        method_options={"num_generations": 4, "budget": "knapsack", "temperature": 2.0, "max_completion_length": 4},
    )  # fmt: skip
    try:
        train(build_config(config))
        with pytest.raises(ValueError, match=r"success rates, in \[0, 1\]; got \[-"):
            train(
                build_config(
                    {
                        **config,
                        "out": str(tmp_path / "graded"),
                        "reward": "length",
                        "reward_options": {"length": {"target": 2}},
                    }
                )
            )
    finally:
        TEXT_REWARDS.unregister("test_even_length")
    records = metric_records(tmp_path / "run", skip_first=True)
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert all(2 <= r["budget/min_generations"] <= 4 <= r["budget/max_generations"] <= 16 for r in records)
    assert all(r["transitions/trained"] <= 16 for r in records)
