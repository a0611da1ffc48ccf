"""Reward scoring of a distributed batch: pointwise terms per process, pairwise terms over the
whole batch (each pair judged once by one process), failed scores imputed within their group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flowrl.rewards.combine import RewardScores, RewardSet
from flowrl.rewards.win_rates import win_rates, within_group_pairs


def score_batch(
    reward: RewardSet,
    images: torch.Tensor,
    prompts: list[str],
    groups: torch.Tensor,
    rank: int,
    world: int,
    gather: Callable[[Any], list[Any]],
) -> RewardScores:
    """This process's samples scored by the reward set. Pairwise terms judge every pair within a
    group (global prompt id) over the whole batch: images are gathered, each process judges every
    world-th pair, and the judgments are gathered back, so no pair is judged twice."""
    components = reward.score_pointwise(images, prompts)
    if reward.pairwise:
        count, offset = images.shape[0], 0
        all_images, all_prompts, all_groups = images, prompts, groups
        if world > 1:
            parts = gather((images.cpu(), prompts, groups))
            offset = sum(len(part[1]) for part in parts[:rank])
            all_images = torch.cat([part[0] for part in parts]).to(images.device)
            all_prompts = [p for part in parts for p in part[1]]
            all_groups = torch.cat([part[2] for part in parts])
        index_a, index_b = within_group_pairs(all_groups)
        mine = torch.arange(len(index_a))[rank::world]
        for term in reward.terms:
            if term.pairwise:
                probs = torch.empty(len(index_a))
                judged = reward.judge_pairs(term, all_images, all_prompts, index_a[mine], index_b[mine])
                for source, part in enumerate(gather(judged)):
                    probs[source::world] = part
                rates = win_rates(index_a, index_b, probs, len(all_groups), unjudged="neutral")
                components[term.name] = (rates[offset : offset + count], torch.ones(count, dtype=torch.bool))
    return reward.combine(components)


def impute_group_means(
    rewards: torch.Tensor, valid: torch.Tensor, groups: torch.Tensor, scored: torch.Tensor
) -> torch.Tensor:
    """rewards with each invalid value replaced by the mean of its group's valid scored values (0
    when none is valid), so a failed score neither rewards nor punishes its group's other samples."""
    rewards = rewards.clone()
    for group in groups[~valid].unique():
        members = groups == group
        good = members & valid & scored
        rewards[members & ~valid] = rewards[good].mean() if bool(good.any()) else 0.0
    return rewards


def score_rollout(
    reward: RewardSet,
    policy: Any,
    rollout: Any,
    prompts: list[str],
    groups: torch.Tensor,
    rank: int,
    world: int,
    gather: Callable[[Any], list[Any]],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(rewards [N], valid [N], components name -> [N] with NaN where invalid) of a rollout's
    samples; samples the credit does not use (rollout.reward_mask false) get 0 and count as valid.
    `prompts`: this shard's prompts; `groups`: their global prompt ids."""
    scored = torch.nonzero(rollout.reward_mask).flatten()
    images = policy.decode(rollout.samples[scored])
    scores = score_batch(
        reward,
        images,
        [prompts[int(p)] for p in rollout.prompt[scored]],
        groups[rollout.prompt[scored]],
        rank,
        world,
        gather,
    )
    rewards, valid = torch.zeros(len(rollout.samples)), torch.ones(len(rollout.samples), dtype=torch.bool)
    rewards[scored], valid[scored] = scores.total, scores.valid
    components = {name: torch.where(scores.valid, values, torch.nan) for name, values in scores.components.items()}
    return rewards, valid, components
