"""objective=sde: the clipped ratio of each trained SDE transition's log-probability (Flow-GRPO
and every method of the solver layer), with a KL to the reference, and GRPO-Guard as an option.

GRPO-Guard (arXiv 2510.22319, eqs. 7-12): for a Gaussian step of std s, log r = -|d|^2 / (2 s^2)
- d.eps / s (d the mean's change since the rollout, averaged over dimensions like the log-probs):
its mean is below 0 and its spread grows as s shrinks. RatioNorm clips
log r_hat = s (log r + |d|^2 / (2 s^2)) = -d.eps instead, and the loss of a step is weighted by
1 / |dt| so that steps contribute gradients of one size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowrl.experience import Batch
from flowrl.losses import KL_FORMS, LOSSES, flow_grpo_kl, gaussian_kl, policy_loss
from flowrl.registry import option_names
from flowrl.samplers.plan import Plan, deterministic_trained_steps
from flowrl.samplers.rollout import RolloutVelocity, Transitions, score_transitions
from flowrl.samplers.sde import SdeStep

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
    # GRPO-Guard: clip RatioNorm's normalised ratio (its paper clips at 2e-6) and, with guard_reweight,
    # weight each step's loss by 1 / |dt|; costs one forward without grad per kept transition.
    guard: bool = False
    guard_reweight: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl not in KL_FORMS:
            raise ValueError(f"kl={self.kl!r}: expected one of {KL_FORMS}")


def ratio_norm(step: SdeStep, old_mean: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """[m] RatioNorm's log r_hat = s (log r + |mean - old_mean|^2 / (2 s^2)) of GRPO-Guard (eq. 8),
    the squared norm averaged over dimensions like the log-probs; gradients flow through both terms."""
    std = step.std.to(step.mean.dtype)
    shift = (step.mean - old_mean.to(step.mean)).pow(2).flatten(1).mean(1)
    return std * (step.logp - logp_old + shift / (2 * std**2))


def step_ratio_stats(log_ratio: torch.Tensor, steps: torch.Tensor) -> dict[str, float]:
    """ratio/step<j>/mean and /std of this micro-batch's importance ratios, per grid step: the
    left shift and the spread that GRPO-Guard corrects, made visible."""
    ratio, steps = torch.exp(log_ratio.detach().float()).cpu(), steps.cpu()
    stats = {}
    for step in steps.unique().tolist():
        values = ratio[steps == step]
        stats[f"ratio/step{step:02d}/mean"] = float(values.mean())
        stats[f"ratio/step{step:02d}/std"] = float(values.std(unbiased=False))
    return stats


def ratio_loss(
    objective: Objective,
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    kl: torch.Tensor | None,
    batch: Batch,
    micro: torch.Tensor,
    normalizer: float,
    advantage_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy surrogate of the run on log-probs [m] of the micro-batch `micro`, plus beta KL;
    `advantage_scale` [m] weights the surrogate alone (a positive factor on the advantage)."""
    context, options = objective.context, objective.options
    # The clip range goes to every surrogate that has one (clip, gspo, a user's).
    has_range = "eps_low" in option_names(LOSSES.entry(context.loss).options)
    surrogate = {"eps_low": options.clip_low, "eps_high": options.clip_high} if has_range else {}
    advantages = batch.advantages[micro].to(logp.device)
    if advantage_scale is not None:
        advantages = advantages * advantage_scale.to(advantages)
    return policy_loss(
        logp,
        logp_old,
        advantages,
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

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        self.old_mean: torch.Tensor | None = None  # GRPO-Guard: each kept transition's mean at the rollout

    @classmethod
    def check(cls, options: Any, config: Any, plan: Plan, method: str) -> None:
        guard = getattr(options, "guard", False)  # a subclass may bring options of its own
        if guard and config.loss != "clip":
            raise ValueError(
                f"objective.guard=true is GRPO-Guard's option of the clipped surrogate; config key loss={config.loss!r} "
                "must be clip"
            )
        if guard and (config.fsdp or config.zero_stage):
            raise ValueError(
                "objective.guard=true is not supported with fsdp=true or zero_stage yet (its extra forward per "
                "transition is not run in lockstep); use data parallel training"
            )
        deterministic = deterministic_trained_steps(plan)
        if deterministic:
            raise ValueError(
                f"config key method_options={config.method_options!r}: noise level 0 makes the trained steps {deterministic} of the "
                f"{method} plan deterministic (ODE steps), and objective=sde trains their log-probability, which a deterministic "
                "step does not have; use objective=matching or objective=nft (they train on the final samples) or a positive noise level"
            )

    def begin_update(self, velocity: RolloutVelocity, batch: Batch, optimizer_steps: int) -> None:
        """GRPO-Guard needs each transition's mean under the weights that sampled it: computed here,
        before the update's first step, by the same function as the loss's forward."""
        self.old_mean = None
        if not getattr(self.options, "guard", False) or len(batch) == 0:
            return
        with torch.no_grad():
            parts = [
                score_transitions(velocity, batch.transitions.select(rows), self.context.max_batch).mean
                for rows in torch.arange(len(batch)).split(self.context.micro_batch)
            ]
        self.old_mean = torch.cat(parts)

    def score(self, velocity: RolloutVelocity, transitions: Transitions, micro: torch.Tensor):
        """(logp with grad, logp_old, KL values or None) of the transitions at `micro`."""
        step, logp_old, kl = self.score_steps(velocity, transitions, micro)
        return step.logp, logp_old, kl

    def score_steps(self, velocity: RolloutVelocity, transitions: Transitions, micro: torch.Tensor):
        """(SdeStep with grad, logp_old, KL values or None) of the transitions at `micro`. The
        reference pass comes first: under full fine-tuning it swaps the initial weights in place,
        which must not happen between the forward with grad and its backward."""
        part = transitions.select(micro.to(transitions.logp.device))
        max_batch = self.context.max_batch
        ref = self.reference_pass(lambda: score_transitions(velocity, part, max_batch))
        step = score_transitions(velocity, part, max_batch)
        kl = None
        if ref is not None and self.options.kl == "flow_grpo":
            kl = flow_grpo_kl(step.mean, ref.mean, step.std.detach(), part.sigma_next - part.sigma)
        elif ref is not None:
            kl = gaussian_kl(step.mean, ref.mean, step.std.detach())
        return step, part.logp, kl

    def loss(
        self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        step, logp_old, kl = self.score_steps(velocity, batch.transitions, micro)
        steps = batch.transitions.step[micro.to(batch.transitions.step.device)]
        ratio_stats = step_ratio_stats(step.logp - logp_old, steps)
        if not getattr(self.options, "guard", False):
            loss, stats = ratio_loss(self, step.logp, logp_old, kl, batch, micro, normalizer)
            return loss, {**stats, **ratio_stats}
        if self.old_mean is None:
            raise RuntimeError("objective.guard=true: begin_update must run before the loss")
        normalised = ratio_norm(step, self.old_mean[micro.to(self.old_mean.device)], logp_old)
        scale = None
        if getattr(self.options, "guard_reweight", True):
            part = batch.transitions.select(micro.to(batch.transitions.step.device))
            scale = 1 / (part.sigma - part.sigma_next).abs()
        loss, stats = ratio_loss(
            self, normalised, torch.zeros_like(normalised), kl, batch, micro, normalizer, advantage_scale=scale
        )
        return loss, {**stats, **ratio_stats}

    def idle_loss(self, velocity: RolloutVelocity, batch: Batch) -> torch.Tensor:
        logp, _, _ = self.score(velocity, batch.rollout.transitions, torch.zeros(1, dtype=torch.long))
        return logp.sum() * 0
