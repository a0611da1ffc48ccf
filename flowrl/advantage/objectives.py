"""Several named rewards in one advantage.

Two rules exist in the literature: weight the raw rewards, then normalise ("before", Flow-GRPO:
weights must absorb the rewards' scales), or normalise each reward within its groups, then weight
the advantages ("after", MixGRPO, Pref-GRPO: scale-free, but it amplifies a reward that is
nearly constant within a group into full-size advantages). "before" is the default because it
never turns a reward's noise into signal; choose "after" for rewards on incomparable scales.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .groups import named_weights
from .registry import get_advantage

COMBINE_MODES = ("before", "after")


def combine_objectives(
    rewards: Mapping[str, torch.Tensor],
    group_ids: torch.Tensor,
    *,
    weights: Mapping[str, float] | None = None,
    mode: str = "before",
    estimator: str = "grpo",
    **options,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(advantages [N], stats) from named rewards; stats hold each reward's mean and std and the
    combined reward's, under `reward/<name>/mean` etc. Missing weights default to 1."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"mode must be one of {COMBINE_MODES}, got {mode!r}")
    weights = named_weights(weights, rewards, "rewards")
    fn = get_advantage(estimator)
    stats: dict[str, float] = {}
    combined = None
    advantages = None
    for name, values in rewards.items():
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        stats[f"reward/{name}/mean"] = float(values.mean())
        stats[f"reward/{name}/std"] = float(values.std(unbiased=False))
        weight = float(weights.get(name, 1.0))
        combined = weight * values if combined is None else combined + weight * values
        if mode == "after":
            part = weight * fn(values, group_ids, **options).double()
            advantages = part if advantages is None else advantages + part
    stats["reward/combined/mean"] = float(combined.mean())
    stats["reward/combined/std"] = float(combined.std(unbiased=False))
    if mode == "before":
        advantages = fn(combined, group_ids, **options).double()
    return advantages.float(), stats
