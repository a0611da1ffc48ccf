"""Group bookkeeping shared by the estimators: ids to dense indices, per-group sums and moments.

Groups may be ragged (different sizes), as when the number of rollouts per prompt varies.
"""

from __future__ import annotations

import torch


def check_rewards(
    rewards: torch.Tensor, group_ids: torch.Tensor | None = None, name: str = "rewards"
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards as float64 [N] (finite) and group ids as dense indices [N] in [0, G)."""
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor [N], got shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"{name} at indices {bad[:10]} are not finite")
    if group_ids is None:
        group_ids = torch.zeros(len(rewards), dtype=torch.long)
    group_ids = torch.as_tensor(group_ids, device=rewards.device).flatten()
    if group_ids.shape[0] != rewards.shape[0]:
        raise ValueError(f"got {group_ids.shape[0]} group ids for {rewards.shape[0]} {name}")
    _, dense = torch.unique(group_ids, return_inverse=True)
    return rewards.to(torch.float64), dense


def group_sum(values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """[G] the sum of values within each group."""
    size = int(dense.max()) + 1 if len(dense) else 0
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, dense, values)


def group_count(dense: torch.Tensor) -> torch.Tensor:
    """[G] the number of members of each group (float64)."""
    return group_sum(torch.ones(len(dense), dtype=torch.float64, device=dense.device), dense)


def group_mean_std(values: torch.Tensor, dense: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] each member's group mean and group std (biased: /n; unbiased: /(n-1), NaN for n = 1)."""
    count = group_count(dense)
    mean = group_sum(values, dense) / count
    squares = group_sum((values - mean[dense]) ** 2, dense)
    var = squares / (count - 1) if unbiased else squares / count
    return mean[dense], var.clamp_min(0).sqrt()[dense]


def zero_variance_mask(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, atol: float = 0.0) -> torch.Tensor:
    """[N] bool: True where the member's group has all rewards equal (within atol), i.e. no signal.

    DAPO's dynamic sampling drops such groups from the update; the estimators give them zeros.
    """
    rewards, dense = check_rewards(rewards, group_ids)
    size = int(dense.max()) + 1 if len(dense) else 0
    high = torch.full((size,), -torch.inf, dtype=rewards.dtype).scatter_reduce(0, dense, rewards, "amax")
    low = torch.full((size,), torch.inf, dtype=rewards.dtype).scatter_reduce(0, dense, rewards, "amin")
    return (high - low <= atol)[dense]


def group_sizes(group_ids: torch.Tensor) -> torch.Tensor:
    """[N] the size of each member's group."""
    _, dense = torch.unique(torch.as_tensor(group_ids).flatten(), return_inverse=True)
    return group_count(dense)[dense].long()


def named_weights(weights, names, what: str) -> dict[str, float]:
    """weights as a dict (missing names weigh 1 when read with .get); a weight for a name not in
    `names` is an error naming it, `what` says what the names are (rewards, granularities)."""
    if not names:
        raise ValueError(f"need at least one of the {what}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"weights name unknown {what} {unknown}; known: {sorted(names)}")
    return weights
