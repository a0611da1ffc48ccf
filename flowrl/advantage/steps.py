"""Per-step credit for flow models: multi-granularity integration (G2RPO). TempFlow-GRPO's
noise-aware step weights are part of its plan (flowrl.samplers.methods.tempflow_grpo)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from flowrl.samplers.methods.tempflow_grpo import noise_aware_step_weights  # noqa: F401  (re-exported)

from .group import grpo
from .groups import named_weights


def multi_granularity(
    values: Mapping[str, torch.Tensor],
    group_ids: torch.Tensor,
    *,
    weights: Mapping[str, float] | None = None,
    unbiased: bool = False,
    eps: float = 1e-4,
) -> torch.Tensor:
    """G2RPO (arXiv 2510.01982): z-score each granularity's rewards within the group, then sum.

    values: name -> [P] rewards of the P samples under one granularity (ODE tail stride) or one
    reward model; NaN marks a sample that granularity did not score: it neither enters that
    group's statistics nor adds to the sample's sum. weights (default 1 each) scale the z-scores.
    """
    weights = named_weights(weights, values, "granularities")
    group_ids = torch.as_tensor(group_ids).flatten()
    total = torch.zeros(len(group_ids), dtype=torch.float64)
    for name, rewards in values.items():
        rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
        if rewards.shape[0] != group_ids.shape[0]:
            raise ValueError(f"granularity {name!r} has {rewards.shape[0]} values for {group_ids.shape[0]} samples")
        scored = ~torch.isnan(rewards)
        if bool(scored.any()):
            z = grpo(rewards[scored], group_ids[scored], unbiased=unbiased, eps=eps).double()
            total[scored] += weights.get(name, 1.0) * z
    return total.float()
