"""objective=sde: the clipped ratio of each trained SDE transition's log-probability (Flow-GRPO
and every method of the solver layer), with the exact Gaussian KL to the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowrl.experience import Batch
from flowrl.losses import KL_FORMS, LOSSES, flow_grpo_kl, gaussian_kl, policy_loss
from flowrl.registry import option_names
from flowrl.samplers.plan import Plan, deterministic_trained_steps
from flowrl.samplers.rollout import RolloutVelocity, Transitions, score_transitions

from .base import Objective
from .registry import register_objective


@dataclass
class ClipOptions:
    """The clip range of the ratio objectives (read by the clip and gspo surrogates)."""

    clip_low: float = 1e-3  # lower clip range eps_low of the ratio (Flow-GRPO uses 1e-4 on SD3.5)
    clip_high: float = 1e-3  # upper clip range eps_high (> clip_low is clip-higher)

    def __post_init__(self) -> None:
        if not 0 <= self.clip_low < 1:
            raise ValueError(f"clip_low must be in [0, 1), got {self.clip_low!r}")
        if self.clip_high < 0:
            raise ValueError(f"clip_high must not be negative, got {self.clip_high!r}")


@dataclass
class SdeOptions(ClipOptions):
    # the KL to the reference: flow_grpo (its code's: the mean difference over 2 g^2, what its recipe betas
    # assume) or exact (the transition KL, over 2 g^2 |dt|: 1/|dt| times larger, 13x on average on 10 SD3 steps)
    kl: str = "flow_grpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl not in KL_FORMS:
            raise ValueError(f"kl={self.kl!r}: expected one of {KL_FORMS}")


def ratio_loss(
    objective: Objective,
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    kl: torch.Tensor | None,
    batch: Batch,
    micro: torch.Tensor,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy surrogate of the run on log-probs [m] of the micro-batch `micro`, plus beta KL."""
    context, options = objective.context, objective.options
    # The clip range goes to every surrogate that has one (clip, gspo, a user's).
    has_range = "eps_low" in option_names(LOSSES.entry(context.loss).options)
    surrogate = {"eps_low": options.clip_low, "eps_high": options.clip_high} if has_range else {}
    return policy_loss(
        logp,
        logp_old,
        batch.advantages[micro].to(logp.device),
        loss=context.loss,
        loss_options=surrogate,
        kl_values=kl,
        beta=context.beta,
        weight=batch.weights[micro].to(logp.device),
        normalizer=normalizer,
    )


@register_objective(
    "sde",
    options=SdeOptions,
    description="the clipped ratio of the rollout's SDE transition log-probs (Flow-GRPO and the rest)",
)
class SdeObjective(Objective):
    supports_sharding = True

    @classmethod
    def check(cls, options: Any, config: Any, plan: Plan, method: str) -> None:
        deterministic = deterministic_trained_steps(plan)
        if deterministic:
            raise ValueError(
                f"config key method_options={config.method_options!r}: noise level 0 makes the trained steps {deterministic} of the "
                f"{method} plan deterministic (ODE steps), and objective=sde trains their log-probability, which a deterministic "
                "step does not have; use objective=matching or objective=nft (they train on the final samples) or a positive noise level"
            )

    def score(self, velocity: RolloutVelocity, transitions: Transitions, micro: torch.Tensor):
        """(logp with grad, logp_old, KL values or None) of the transitions at `micro`. The reference
        pass comes first: under full fine-tuning it swaps the initial weights in place, which must
        not happen between the forward with grad and its backward."""
        part = transitions.select(micro.to(transitions.logp.device))
        max_batch = self.context.max_batch
        ref = self.reference_pass(lambda: score_transitions(velocity, part, max_batch))
        step = score_transitions(velocity, part, max_batch)
        kl = None
        if ref is not None and self.options.kl == "flow_grpo":
            kl = flow_grpo_kl(step.mean, ref.mean, step.std.detach(), part.sigma_next - part.sigma)
        elif ref is not None:
            kl = gaussian_kl(step.mean, ref.mean, step.std.detach())
        return step.logp, part.logp, kl

    def loss(
        self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logp, logp_old, kl = self.score(velocity, batch.transitions, micro)
        return ratio_loss(self, logp, logp_old, kl, batch, micro, normalizer)

    def idle_loss(self, velocity: RolloutVelocity, batch: Batch) -> torch.Tensor:
        logp, _, _ = self.score(velocity, batch.rollout.transitions, torch.zeros(1, dtype=torch.long))
        return logp.sum() * 0
