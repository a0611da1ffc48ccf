"""objective=disco: DisCO (arXiv 2505.12366) for text policies with 0/1 rewards. Per prompt, raise
the mean score of the right completions and lower a soft maximum (tau * log-sum-exp) of the wrong
ones' scores; no clipping, and the k3 KL to the rollout policy is held near delta by a squared
hinge (weight beta). Tied groups carry no term; the sum is divided by the step's prompt count."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowrl.experience import Batch
from flowrl.losses.kl import kl_estimate

from .registry import register_objective
from .tokens import TokenObjective

SCORES = ("log_l", "l_ratio")  # token-mean log-likelihood, or token-mean likelihood ratio to the rollout
NEGATIVES = ("lse", "mean")  # DisCO's soft maximum over the wrong completions, or DisCO-b's mean


@dataclass
class DiscoOptions:
    score: str = "log_l"
    tau: float | None = None  # the soft maximum's temperature; None: 10 for log_l, 1 for l_ratio (the paper's)
    delta: float = 1e-4  # the KL budget to the rollout policy
    beta: float = 1e3  # the squared hinge's weight
    negatives: str = "lse"

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {list(SCORES)}, got {self.score!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if self.tau is None:
            self.tau = 10.0 if self.score == "log_l" else 1.0
        if self.tau <= 0 or self.delta < 0 or self.beta < 0:
            raise ValueError(f"need tau > 0, delta >= 0, beta >= 0; got {self.tau!r}, {self.delta!r}, {self.beta!r}")


def disco_objective(
    scores: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor, tau: float, negatives: str = "lse"
) -> torch.Tensor:
    """Sum over groups with both right (reward 1) and wrong (reward 0) members of: the right
    members' mean score - tau * log sum exp(score / tau) over the wrong ones (or their mean)."""
    total = scores.new_zeros(())
    for group in groups.unique():
        member = groups == group
        right, wrong = member & (rewards == 1), member & (rewards == 0)
        if not bool(right.any()) or not bool(wrong.any()):
            continue
        if negatives == "lse":
            soft_max = tau * torch.logsumexp(scores[wrong] / tau, dim=0)
        else:
            soft_max = scores[wrong].mean()
        total = total + scores[right].mean() - soft_max
    return total


@register_objective(
    "disco",
    options=DiscoOptions,
    description="DisCO: right completions' scores up, wrong ones' soft maximum down, a KL hinge (text, 0/1 rewards)",
)
class DiscoObjective(TokenObjective):
    """Reads from the batch: transitions (Completions, grouped by prompt), their rewards (0 or 1)."""

    def prepare(self, batch: Batch) -> None:
        super().prepare(batch)
        rewards = batch.rewards[batch.keep].to(torch.float64)
        bad = sorted({float(r) for r in rewards.tolist() if r not in (0.0, 1.0)})
        if bad:
            raise ValueError(
                f"objective=disco needs rewards of 0 or 1 (right or wrong), got {bad[:5]}; use a verifier such as "
                "reward=exact_match, or objective=tokens for graded rewards"
            )
        self.rewards = rewards
        prompts = batch.transitions.prompt
        self.rows_per_group = len(prompts) / max(len(prompts.unique()), 1)

    def order(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Whole groups in a random order: a group's terms need its members together."""
        prompts = batch.transitions.prompt
        groups = prompts.unique()
        shuffled = groups[torch.randperm(len(groups), generator=generator)]
        return torch.cat([torch.nonzero(prompts == g).flatten() for g in shuffled])

    def micro_batches(self, batch: Batch, indices: torch.Tensor, size: int) -> list[torch.Tensor]:
        """Runs of whole groups of at most `size` rows (a larger group is one micro-batch)."""
        prompts = batch.transitions.prompt[indices]
        starts = [0] + [i for i in range(1, len(indices)) if prompts[i] != prompts[i - 1]] + [len(indices)]
        micros, first = [], 0
        for start, end in zip(starts[1:-1], starts[2:], strict=True):
            if end - first > size:
                micros.append(indices[first:start])
                first = start
        if len(indices):
            micros.append(indices[first:])
        return micros

    def loss(self, velocity, batch: Batch, micro: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict]:
        options = self.options
        part = batch.transitions.select(micro)
        logp = velocity(part)
        old = part.logp.to(logp)
        mask = part.mask.to(logp)
        lengths = mask.sum(dim=1).clamp_min(1)
        if options.score == "log_l":
            scores = (logp * mask).sum(dim=1) / lengths
        else:
            scores = (torch.exp(logp - old) * mask).sum(dim=1) / lengths
        groups_in_step = normalizer / self.rows_per_group
        objective = disco_objective(scores, self.rewards[micro].to(logp), part.prompt, options.tau, options.negatives)
        # KL(rollout || current) per token (k3 with the current policy as the sampling one's reference)
        per_token = kl_estimate(old, logp, "k3") * mask
        micro_kl = per_token.sum() / mask.sum().clamp_min(1)
        kl = per_token.sum() / (normalizer * self.tokens_per_row)
        weight = torch.clamp(options.beta * (micro_kl.detach() - options.delta), min=0.0)
        loss = -objective / groups_in_step + weight * kl
        stats = {"loss/policy": float(-objective.detach()) / groups_in_step, "disco/kl": float(micro_kl.detach())}
        stats["disco/constraint_active"] = float(weight > 0)
        reference = self.reference_pass(lambda: velocity(part))
        if reference is not None and self.context.beta:
            to_reference = (kl_estimate(logp, reference.to(logp), "k3") * mask).sum() / (
                normalizer * self.tokens_per_row
            )
            loss = loss + self.context.beta * to_reference
            stats["loss/kl"] = float(to_reference.detach())
        stats["loss/total"] = float(loss.detach())
        return loss, {**stats, **self.consistency}
