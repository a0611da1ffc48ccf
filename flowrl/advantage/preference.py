"""Pref-GRPO (arXiv 2508.20751): advantages from pairwise preferences, through win rates
(flowrl.rewards.win_rates, the one implementation the reward set uses too)."""

from __future__ import annotations

import torch

from flowrl.rewards.win_rates import TIE_RULES, win_rates  # noqa: F401  (TIE_RULES re-exported)

from .group import grpo

# The advantage core's name for the one win-rate function: every sample must be in a counted comparison.
pairwise_win_rates = win_rates


def win_rate_matrix(preferences: torch.Tensor, *, ties: str = "half", tie_margin: float = 0.0) -> torch.Tensor:
    """[G] win rates from a [G, G] matrix, preferences[i, j] = P(i preferred over j); NaN marks an
    unjudged ordered pair and the diagonal is ignored. Both orders may be judged (to cancel a
    judge's position bias): each judged entry counts as one comparison."""
    preferences = torch.as_tensor(preferences, dtype=torch.float64)
    if preferences.ndim != 2 or preferences.shape[0] != preferences.shape[1]:
        raise ValueError(f"preferences must be a square [G, G] matrix, got shape {tuple(preferences.shape)}")
    size = preferences.shape[0]
    judged = torch.isfinite(preferences) & ~torch.eye(size, dtype=torch.bool)
    index_a, index_b = torch.nonzero(judged, as_tuple=True)
    return pairwise_win_rates(index_a, index_b, preferences[index_a, index_b], size, ties=ties, tie_margin=tie_margin)


def pref_grpo(
    index_a: torch.Tensor,
    index_b: torch.Tensor,
    prob_a: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    ties: str = "half",
    tie_margin: float = 0.0,
    **grpo_options,
) -> torch.Tensor:
    """Pref-GRPO advantages: win rates within each group, then group normalisation (`grpo`)."""
    group_ids = torch.as_tensor(group_ids).flatten()
    rates = pairwise_win_rates(
        index_a, index_b, prob_a, len(group_ids), ties=ties, tie_margin=tie_margin, group_ids=group_ids
    )
    return grpo(rates, group_ids, **grpo_options)
