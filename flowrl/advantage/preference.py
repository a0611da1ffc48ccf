"""Win rates from pairwise preferences (Pref-GRPO, arXiv 2508.20751).

A pairwise judge says, for a pair (a, b) of one group, the probability p that a is preferred.
Each judged pair counts one comparison for both samples: a gains p wins, b gains 1 - p. A
sample's reward is its win rate, wins / comparisons; with every pair judged once the group mean
is 0.5. Ties (p = 0.5, which is also how a failed judgment should be recorded) count half a win
each by default, or are left out of both samples' counts with `ties="exclude"`.
"""

from __future__ import annotations

import torch

from .group import grpo

TIE_RULES = ("half", "exclude")


def pairwise_win_rates(
    index_a: torch.Tensor,
    index_b: torch.Tensor,
    prob_a: torch.Tensor,
    num_samples: int,
    *,
    ties: str = "half",
    tie_margin: float = 0.0,
    group_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """[num_samples] win rates from a flat list of judged pairs (index_a[k] vs index_b[k])."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    index_a = torch.as_tensor(index_a).long().flatten()
    index_b = torch.as_tensor(index_b).long().flatten()
    prob_a = torch.as_tensor(prob_a, dtype=torch.float64).flatten()
    if not (len(index_a) == len(index_b) == len(prob_a)):
        raise ValueError(f"index_a, index_b and prob_a must have one entry per pair, got {len(index_a)}, {len(index_b)}, {len(prob_a)}")
    if bool(((prob_a < 0) | (prob_a > 1) | ~torch.isfinite(prob_a)).any()):
        bad = torch.nonzero((prob_a < 0) | (prob_a > 1) | ~torch.isfinite(prob_a)).flatten().tolist()
        raise ValueError(f"preference probabilities must lie in [0, 1]; pairs {bad[:10]} do not (record a failed judgment as a tie, 0.5)")
    for name, index in (("index_a", index_a), ("index_b", index_b)):
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_samples):
            raise ValueError(f"{name} must lie in [0, {num_samples}), got values in [{int(index.min())}, {int(index.max())}]")
    if bool((index_a == index_b).any()):
        raise ValueError("a sample cannot be compared with itself")
    if group_ids is not None:
        group_ids = torch.as_tensor(group_ids).flatten()
        if bool((group_ids[index_a] != group_ids[index_b]).any()):
            raise ValueError("pairs must compare samples of the same group (prompt)")
    counted = torch.ones_like(prob_a)
    if ties == "exclude":
        counted = ((prob_a - 0.5).abs() > tie_margin).double()
    elif tie_margin > 0:
        prob_a = torch.where((prob_a - 0.5).abs() <= tie_margin, torch.full_like(prob_a, 0.5), prob_a)
    wins = torch.zeros(num_samples, dtype=torch.float64)
    comparisons = torch.zeros(num_samples, dtype=torch.float64)
    wins.index_add_(0, index_a, prob_a * counted).index_add_(0, index_b, (1 - prob_a) * counted)
    comparisons.index_add_(0, index_a, counted).index_add_(0, index_b, counted)
    if bool((comparisons == 0).any()):
        missing = torch.nonzero(comparisons == 0).flatten().tolist()
        raise ValueError(f"samples {missing[:10]} took part in no counted comparison, so their win rate is undefined")
    return (wins / comparisons).float()


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
    rates = pairwise_win_rates(index_a, index_b, prob_a, len(group_ids), ties=ties, tie_margin=tie_margin, group_ids=group_ids)
    return grpo(rates, group_ids, **grpo_options)
