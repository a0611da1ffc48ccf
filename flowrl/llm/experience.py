"""One text iteration's experience: prompts -> G completions each -> rewards -> group-relative
advantages, as a Batch the trainer's update loop and the tokens objective read."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from flowrl.advantage import ADVANTAGES, clip_advantages, zero_variance_mask
from flowrl.experience import Batch
from flowrl.metrics import reward_stats

from .method import TextGrpoOptions, estimator_options
from .policy import Completions, TextPolicy
from .prompts import TextPrompts
from .rewards import TextRewardSet


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return (seed * 1_000_003 + iteration * 65_537 + rank) % (2**62)


class TextExperience:
    """Collects text batches for the trainer (each process its share of the prompts, whole groups)."""

    def __init__(
        self, config: Any, policy: TextPolicy, options: TextGrpoOptions, rank: int, world: int, gather
    ) -> None:
        self.config, self.policy, self.options = config, policy, options
        self.rank, self.world, self.gather = rank, world, gather
        self.prompts = TextPrompts(config.prompts, config.seed)
        self.rewards = TextRewardSet(config.reward, config.reward_options)

    def scorer(self):
        """The log-probability function the objective calls (the rollout's own)."""
        temperature, max_batch = self.options.temperature, self.config.max_batch
        return lambda part: self.policy.token_logps(part, temperature=temperature, max_batch=max_batch)

    def sample(self, rows: list[dict], n: int, seed: int, greedy: bool = False) -> Completions:
        o = self.options
        return self.policy.sample(
            [row["prompt"] for row in rows],
            n,
            temperature=o.temperature,
            top_p=o.top_p,
            max_new_tokens=o.max_completion_length,
            stop=o.stop,
            seed=seed,
            greedy=greedy,
            max_batch=self.config.max_batch,
        )

    @torch.no_grad()
    def collect(self, iteration: int) -> Batch:
        config, o = self.config, self.options
        start = time.perf_counter()
        global_rows = self.prompts.batch(iteration, config.prompts_per_iteration)
        local = list(range(self.rank, len(global_rows), self.world))
        rows = [global_rows[i] for i in local]
        completions = self.sample(rows, o.num_generations, iteration_seed(config.seed, iteration, self.rank))
        timings = {"time/rollout": time.perf_counter() - start}
        start = time.perf_counter()
        per_completion = [rows[int(p)] for p in completions.prompt]
        values, means = self.rewards(per_completion, completions.texts)
        timings["time/reward"] = time.perf_counter() - start
        rewards = torch.tensor(values, dtype=torch.float32)
        groups = torch.tensor(local)[completions.prompt]  # global prompt index of each completion
        # Group statistics over the whole batch: every process's rewards, in process order.
        everyone = self.gather((rewards, groups))
        all_rewards = torch.cat([r for r, _ in everyone])
        all_groups = torch.cat([g for _, g in everyone])
        offset = sum(len(r) for r, _ in everyone[: self.rank])
        advantages, keep, stats = self.credit(all_rewards, all_groups)
        local_rows = slice(offset, offset + len(rewards))
        advantages, keep = advantages[local_rows], keep[local_rows]
        if o.mask_truncated_completions:
            keep &= ~completions.truncated.cpu()
        kept = completions.select(keep)
        lengths = completions.mask.sum(dim=1).float()
        stats.update(
            {
                **means,
                "completions/mean_length": float(lengths.mean()),
                "completions/truncated_fraction": float(completions.truncated.float().mean()),
                "transitions/trained": float(keep.sum()),
                **timings,
            }
        )
        return Batch(
            iteration,
            completions,
            [row["prompt"] for row in rows],
            None,
            torch.tensor(local),
            rewards,
            keep,
            kept,
            clip_advantages(advantages[keep], config.advantage_clip),
            torch.ones(int(keep.sum())),
            stats,
        )

    def credit(self, rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Advantages [N] (0 where the reward is missing), the rows that train, and reward stats."""
        finite = torch.isfinite(rewards)
        advantages = torch.zeros_like(rewards)
        keep = finite.clone()
        stats: dict[str, float] = {"reward/missing_fraction": float((~finite).float().mean())}
        if bool(finite.any()):
            estimator = ADVANTAGES.lookup(self.options.advantage)
            advantages[finite] = estimator(rewards[finite], groups[finite], **estimator_options(self.options)).float()
            stats.update(reward_stats(rewards[finite]))
            tied = zero_variance_mask(rewards[finite], groups[finite])
            stats["groups/zero_variance_fraction"] = float(tied.float().mean())
            if self.config.drop_zero_variance:
                keep[torch.nonzero(finite).flatten()[tied]] = False
        else:
            stats.update({"reward/mean": math.nan, "reward/std": math.nan, "reward/max": math.nan})
        return advantages, keep, stats
