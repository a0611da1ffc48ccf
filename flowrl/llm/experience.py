"""One text iteration's experience: prompts -> G completions each -> rewards -> group-relative
advantages, as a Batch the trainer's update loop and the tokens objective read."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from flowrl.advantage import (
    ADVANTAGES,
    SpoTracker,
    clip_advantages,
    knapsack_budgets,
    spo_advantages,
    zero_variance_mask,
)
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
        self.tracker = SpoTracker() if options.advantage == "spo" else None

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

    def state_dict(self) -> dict:
        """SPO's per-prompt values, when the run uses them."""
        return {"spo": self.tracker.state_dict()} if self.tracker is not None else {}

    def load_state_dict(self, state: dict, where: str) -> None:
        if self.tracker is None:
            return
        if "spo" not in state:
            raise ValueError(f"{where} has no SPO prompt values to resume (written by a run without advantage=spo)")
        self.tracker.load_state_dict(state["spo"])

    def score(self, rows: list[dict], completions: Completions, seed: int) -> tuple[torch.Tensor, dict]:
        per_completion = [rows[int(p)] for p in completions.prompt]
        values, means = self.rewards(per_completion, completions.texts, completions.completion_ids(), seed=seed)
        return torch.tensor(values, dtype=torch.float32), means

    def knapsack_sample(self, rows: list[dict], seed: int) -> tuple[Completions, torch.Tensor, dict]:
        """Knapsack RL's budgets: budget_min samples of every prompt estimate its success rate, then
        the rest of len(rows) x num_generations samples go where they are worth most (ragged groups)."""
        o = self.options
        pilot = self.sample(rows, o.budget_min, seed)
        rewards, means = self.score(rows, pilot, seed)
        finite = torch.isfinite(rewards)
        if bool(((rewards[finite] < 0) | (rewards[finite] > 1)).any()):
            bad = sorted(set(rewards[finite & ((rewards < 0) | (rewards > 1))].tolist()))[:5]
            raise ValueError(f"budget=knapsack reads rewards as success rates, in [0, 1]; got {bad}")
        rates = []
        for p in range(len(rows)):
            values = rewards[(pilot.prompt == p) & finite]
            rates.append(float(values.mean()) if len(values) else 0.0)
        budgets = knapsack_budgets(rates, len(rows) * o.num_generations, o.budget_min, o.budget_max)
        owners = torch.tensor([p for p, n in enumerate(budgets) for _ in range(n - o.budget_min)], dtype=torch.long)
        if len(owners) == 0:
            return pilot, rewards, means
        extra = self.sample([rows[int(p)] for p in owners], 1, seed + 7_919)
        extra_rewards, extra_means = self.score([rows[int(p)] for p in owners], extra, seed + 7_919)
        extra.prompt = owners[extra.prompt]
        weight = len(extra) / (len(extra) + len(pilot))
        means = {k: (1 - weight) * v + weight * extra_means.get(k, v) for k, v in means.items()}
        means["budget/max_generations"] = float(max(budgets))
        means["budget/min_generations"] = float(min(budgets))
        completions = Completions.cat([pilot, extra], self.policy.tokenizer.pad_token_id)
        return completions, torch.cat([rewards, extra_rewards]), means

    @torch.no_grad()
    def collect(self, iteration: int) -> Batch:
        config, o = self.config, self.options
        start = time.perf_counter()
        global_rows = self.prompts.batch(iteration, config.prompts_per_iteration)
        local = list(range(self.rank, len(global_rows), self.world))
        rows = [global_rows[i] for i in local]
        seed = iteration_seed(config.seed, iteration, self.rank)
        if o.budget == "knapsack":
            completions, rewards, means = self.knapsack_sample(rows, seed)
        else:
            completions = self.sample(rows, o.num_generations, seed)
            rewards, means = self.score(rows, completions, seed)
        resampled = 0
        for round_ in range(1, o.resample_rounds + 1):  # DAPO's dynamic sampling: replace tied groups
            tied = tied_prompts(rewards, completions.prompt)
            if not tied:
                break
            fresh = self.prompts.batch(iteration + 1_000_003 * round_, len(global_rows))
            replacements = [fresh[i] for i in local][: len(tied)]
            extra = self.sample(replacements, o.num_generations, seed + round_)
            extra_rewards, _ = self.score(replacements, extra, seed + round_)
            for slot, prompt in enumerate(tied):
                rows[prompt] = replacements[slot]
            extra.prompt = torch.tensor(tied)[extra.prompt]
            kept = ~torch.isin(completions.prompt, torch.tensor(tied))
            completions = Completions.cat([completions.select(kept), extra], self.policy.tokenizer.pad_token_id)
            rewards = torch.cat([rewards[kept], extra_rewards])
            resampled += len(tied)
        timings = {"time/rollout": time.perf_counter() - start}
        groups = torch.tensor(local)[completions.prompt]  # global prompt index of each completion
        keys = [row["prompt"] for row in rows]
        # Group statistics over the whole batch: every process's rewards, in process order.
        everyone = self.gather((rewards, groups, [keys[int(p)] for p in completions.prompt]))
        all_rewards = torch.cat([r for r, _, _ in everyone])
        all_groups = torch.cat([g for _, g, _ in everyone])
        all_keys = [k for _, _, part in everyone for k in part]
        offset = sum(len(r) for r, _, _ in everyone[: self.rank])
        advantages, keep, stats = self.credit(all_rewards, all_groups, all_keys)
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
                **({"groups/resampled": float(resampled)} if o.resample_rounds else {}),
                **timings,
            }
        )
        return Batch(
            iteration,
            completions,
            keys,
            None,
            torch.tensor(local),
            rewards,
            keep,
            kept,
            clip_advantages(advantages[keep], config.advantage_clip),
            torch.ones(int(keep.sum())),
            stats,
        )

    def credit(
        self, rewards: torch.Tensor, groups: torch.Tensor, keys: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Advantages [N] (0 where the reward is missing), the rows that train, and reward stats."""
        finite = torch.isfinite(rewards)
        advantages = torch.zeros_like(rewards)
        keep = finite.clone()
        stats: dict[str, float] = {"reward/missing_fraction": float((~finite).float().mean())}
        if not bool(finite.any()):
            stats.update({"reward/mean": math.nan, "reward/std": math.nan, "reward/max": math.nan})
            return advantages, keep, stats
        stats.update(reward_stats(rewards[finite]))
        rows = torch.nonzero(finite).flatten()
        if self.tracker is not None:  # SPO: each prompt's tracked value is the baseline; no groups needed
            advantages[rows] = spo_advantages(rewards[rows], [keys[i] for i in rows.tolist()], self.tracker)
            return advantages, keep, stats
        estimator = ADVANTAGES.lookup(self.options.advantage)
        advantages[rows] = estimator(rewards[rows], groups[rows], **estimator_options(self.options)).float()
        tied = zero_variance_mask(rewards[rows], groups[rows])
        stats["groups/zero_variance_fraction"] = float(tied.float().mean())
        if self.config.drop_zero_variance:
            keep[rows[tied]] = False
        return advantages, keep, stats


def tied_prompts(rewards: torch.Tensor, prompt: torch.Tensor) -> list[int]:
    """The local prompt indices whose completions' rewards all tie (or are all missing)."""
    tied = []
    for p in prompt.unique().tolist():
        values = rewards[prompt == p]
        values = values[torch.isfinite(values)]
        if len(values) == 0 or bool((values == values[0]).all()):
            tied.append(p)
    return tied
