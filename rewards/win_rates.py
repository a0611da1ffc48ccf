"""Win rates from pairwise judgments (Pref-GRPO, arXiv 2508.20751): the one implementation, used
by the reward set (pairwise terms of a reward spec) and by the advantage core (pref_grpo).

A judge says, for a pair (a, b) of one group, the probability p that a is preferred. Each judged
pair counts one comparison for both samples: a gains p wins, b gains 1 - p. A sample's value is
its win rate, wins / comparisons; with every pair judged once the group mean is 0.5. Ties
(p = 0.5, also how a failed judgment should be recorded) count half a win each by default, or are
left out of both samples' counts with `ties="exclude"`. Pure tensor code: imports only torch.
"""

from __future__ import annotations

import torch

TIE_RULES = ("half", "exclude")
UNJUDGED_RULES = ("error", "neutral")


def within_group_pairs(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index_a, index_b) of every unordered pair i < j with the same group id."""
    group_ids = torch.as_tensor(group_ids).flatten()
    same = (group_ids[:, None] == group_ids[None, :]).triu(diagonal=1)
    index_a, index_b = torch.nonzero(same, as_tuple=True)
    return index_a, index_b


def win_rates(
    index_a: torch.Tensor,
    index_b: torch.Tensor,
    prob_a: torch.Tensor,
    num_samples: int,
    *,
    ties: str = "half",
    tie_margin: float = 0.0,
    group_ids: torch.Tensor | None = None,
    unjudged: str = "error",
) -> torch.Tensor:
    """[num_samples] win rates from a flat list of judged pairs (index_a[k] vs index_b[k]).
    A sample in no counted comparison (a group of one) is an error, or with unjudged="neutral"
    gets 0.5."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    if unjudged not in UNJUDGED_RULES:
        raise ValueError(f"unjudged must be one of {UNJUDGED_RULES}, got {unjudged!r}")
    index_a = torch.as_tensor(index_a).long().flatten()
    index_b = torch.as_tensor(index_b).long().flatten()
    prob_a = torch.as_tensor(prob_a, dtype=torch.float64).flatten()
    if not (len(index_a) == len(index_b) == len(prob_a)):
        raise ValueError(
            f"index_a, index_b and prob_a must have one entry per pair, got {len(index_a)}, {len(index_b)}, {len(prob_a)}"
        )
    bad = (prob_a < 0) | (prob_a > 1) | ~torch.isfinite(prob_a)
    if bool(bad.any()):
        raise ValueError(
            f"preference probabilities must lie in [0, 1]; pairs {torch.nonzero(bad).flatten().tolist()[:10]} do not "
            "(record a failed judgment as a tie, 0.5)"
        )
    for name, index in (("index_a", index_a), ("index_b", index_b)):
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_samples):
            raise ValueError(
                f"{name} must lie in [0, {num_samples}), got values in [{int(index.min())}, {int(index.max())}]"
            )
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
    missing = comparisons == 0
    if unjudged == "error" and bool(missing.any()):
        raise ValueError(
            f"samples {torch.nonzero(missing).flatten().tolist()[:10]} took part in no counted comparison, "
            "so their win rate is undefined"
        )
    return torch.where(missing, torch.full_like(wins, 0.5), wins / comparisons.clamp(min=1)).float()
