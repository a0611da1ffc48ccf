"""objective=matching: Advantage Weighted Matching (AWM), the clipped ratio of a flow-matching
log-likelihood proxy of each final sample, freshly noised at the trained steps' levels."""

from __future__ import annotations

from typing import Any

import torch

from flowrl.experience import Batch
from flowrl.samplers.matching import MatchingPoints, MatchingScore, matching_points, score_matching
from flowrl.samplers.rollout import RolloutVelocity
from flowrl.samplers.shard import seeded_noise

from .base import Objective
from .registry import register_objective
from .sde import ClipOptions, ratio_loss


def matching_kl(scored: MatchingScore, ref: MatchingScore | None) -> torch.Tensor | None:
    """[M] AWM's KL of matching points: the squared velocity difference to the reference (None without one)."""
    return None if ref is None else (scored.velocity.float() - ref.velocity.float()).pow(2).flatten(1).mean(1)


class PointsObjective(Objective):
    """Objectives on matching points: one per kept transition, the chain's final sample noised
    afresh to the transition's level with seeded noise (the same point on every process)."""

    trains_on_points = True

    def value(self, score: MatchingScore) -> torch.Tensor:
        """What the objective compares with the weights before the update."""
        raise NotImplementedError

    def lagged_sampler(self) -> Any:
        """The average that samples the rollouts, or None for the current weights."""
        return None

    def point_seeds(self, iteration: int, roots: torch.Tensor, steps: torch.Tensor) -> list[int]:
        """A seed per (global root, grid step): the same point whichever process trains it."""
        seeds = self.context.root_seeds(iteration, roots)
        return [(seed * 1_000_033 + int(step) + 1) % (2**62) for seed, step in zip(seeds, steps)]

    def prepare(self, batch: Batch) -> None:
        rollout, kept = batch.rollout, batch.transitions
        seeds = self.point_seeds(batch.iteration, batch.roots[rollout.node_root[kept.child].cpu()], kept.step.cpu())
        batch.points = matching_points(rollout, kept, seeded_noise(seeds, self.context.sample_shape))

    def begin_update(self, velocity: RolloutVelocity, batch: Batch, optimizer_steps: int) -> None:
        # One optimizer step from the sampling weights: they have not moved, so old = new exactly.
        if optimizer_steps > 1 or self.lagged_sampler() is not None:
            with self.sampling_weights():
                batch.old_scores = self.scores_before(velocity, batch.points)

    @torch.no_grad()
    def scores_before(self, velocity: RolloutVelocity, points: MatchingPoints) -> torch.Tensor:
        """The value of every point under the sampling weights, before this iteration's update."""
        indices = torch.arange(len(points))
        scores = [
            score_matching(velocity, points.select(i), self.context.max_batch)
            for i in indices.split(self.context.micro_batch)
        ]
        return torch.cat([self.value(s).cpu() for s in scores])

    def score_points(self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor):
        """(points, their score with grad, the old value, KL values or None) at `micro`; the
        reference pass first (see SdeObjective.score)."""
        part = batch.points.select(micro)
        max_batch = self.context.max_batch
        ref = self.reference_pass(lambda: score_matching(velocity, part, max_batch))
        scored = score_matching(velocity, part, max_batch)
        now = self.value(scored)
        old = now.detach() if batch.old_scores is None else batch.old_scores[micro].to(now.device)
        return part, scored, old, matching_kl(scored, ref)


@register_objective(
    "matching",
    options=ClipOptions,
    description="Advantage Weighted Matching: the ratio of a flow-matching likelihood proxy of final samples (chain methods)",
)
class MatchingObjective(PointsObjective):
    def value(self, score: MatchingScore) -> torch.Tensor:
        return score.logp

    def loss(
        self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        _, scored, logp_old, kl = self.score_points(velocity, batch, micro)
        return ratio_loss(self, scored.logp, logp_old, kl, batch, micro, normalizer)
