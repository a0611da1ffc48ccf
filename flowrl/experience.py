"""One iteration's experience, as the trainer hands it to an objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowrl.samplers.matching import MatchingPoints
from flowrl.samplers.rollout import Rollout, Transitions


@dataclass
class Batch:
    """The rollout of this process's shard, its rewards and the per-transition learning signal.

    `transitions` are the kept transitions (the ones that train), aligned with `advantages` and
    `weights`; objectives that train on matching points add them in `prepare` (`points`, and the
    scores before the update in `old_scores`)."""

    iteration: int
    rollout: Rollout
    prompts: list[str]
    cond: Any  # the encoded prompts (the policy's conditioning), reused by the update
    roots: torch.Tensor  # [R] the global root index of each of this shard's roots
    rewards: torch.Tensor  # [N] (0 for samples the credit does not use)
    keep: torch.Tensor  # [M] bool over rollout.transitions
    transitions: Transitions  # the M' kept transitions
    advantages: torch.Tensor  # [M']
    weights: torch.Tensor  # [M']
    stats: dict[str, float]
    points: MatchingPoints | None = None  # one flow-matching point per kept transition (matching, nft)
    old_scores: torch.Tensor | None = None  # their score under the sampling weights, when it differs

    def __len__(self) -> int:
        return len(self.transitions)
