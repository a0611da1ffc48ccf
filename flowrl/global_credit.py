"""Credit over the global batch: every process's rollout structure and rewards are gathered, so a
group split across processes is normalised as one; each process keeps its own block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flowrl.samplers.rollout import Rollout
from flowrl.samplers.shard import Shard, merge_rollouts, rollout_metadata

from .advantage import LearningSignal, assign_credit, learning_signal
from .config import TrainConfig
from .metrics import component_stats, reward_stats
from .scoring import impute_group_means


def credit_global_batch(
    method: Any,
    method_config: Any,
    config: TrainConfig,
    iteration: int,
    local: Rollout,
    scores: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
    shard: Shard,
    prompt_count: int,
    rank: int,
    gather: Callable[[Any], list[Any]],
) -> tuple[LearningSignal, dict[str, float]]:
    """This process's learning signal and the iteration's statistics over the whole batch.
    `scores`: this process's (rewards, valid, components) from scoring.score_rollout."""
    rewards, valid, components = scores
    gathered = gather((rollout_metadata(local), rewards, shard.prompts, shard.roots, valid, components))
    whole = merge_rollouts([g[0] for g in gathered], [g[2] for g in gathered], [g[3] for g in gathered])
    all_rewards, all_valid = torch.cat([g[1] for g in gathered]), torch.cat([g[4] for g in gathered])
    invalid_prompts = whole.prompt[~all_valid].unique()
    if len(invalid_prompts):  # reward_invalid=drop: neutral values in, the whole group out of the update
        all_rewards = impute_group_means(all_rewards, all_valid, whole.prompt, whole.reward_mask.cpu().bool())
    first = sum(len(g[0].transitions) for g in gathered[:rank])  # this process's block of the transitions
    credit = assign_credit(method, whole, all_rewards, method_config, iteration)
    signal = learning_signal(
        credit,
        whole,
        all_rewards,
        slice(first, first + len(local.transitions)),
        invalid_prompts=invalid_prompts,
        drop_zero_variance=config.drop_zero_variance,
        clip=config.advantage_clip,
    )
    kept_advantages = torch.cat(gather(signal.advantages))
    all_scored = torch.nonzero(whole.reward_mask).flatten()
    stats = {
        **reward_stats(all_rewards[all_scored]),
        **component_stats([g[5] for g in gathered]),
        "reward/invalid": float((~all_valid[all_scored]).sum()),
        "zero_variance_prompts": float(len(signal.constant_prompts)) / prompt_count,
        "advantage/mean": float(kept_advantages.mean()) if len(kept_advantages) else 0.0,
        "advantage/std": float(kept_advantages.std(unbiased=False)) if len(kept_advantages) else 0.0,
        "nfe": float(whole.nfe),
        "samples": float(len(all_scored)),
        "transitions/trained": float(len(kept_advantages)),
        **{k: v for k, v in credit.stats.items() if not k.startswith("reward/")},
    }
    return signal, stats
