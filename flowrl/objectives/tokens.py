"""objective=tokens: the clipped ratio of each completion token's log-probability (or of its
sequence's, GSPO), aggregated as TRL's loss types do, with the k3 KL to the reference per token
(times the ratio by default, as TRL's GRPOTrainer). tests/test_trl_parity.py checks it against TRL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowrl.experience import Batch
from flowrl.losses import policy_loss
from flowrl.losses.kl import kl_estimate

from .base import Objective
from .registry import register_objective

LOSS_TYPES = {
    "grpo": "seq-mean-token-mean",  # each completion's token mean, then the mean over completions
    "bnpo": "token-mean",  # the mean over the step's tokens
    "dapo": "token-mean",  # the mean over the batch's tokens (DAPO's token-level aggregation)
    "dr_grpo": "seq-mean-token-sum-norm",  # token sums over completions x max_completion_length
}


@dataclass
class TokenOptions:
    epsilon: float = 0.2  # the clip range's lower side
    epsilon_high: float | None = None  # its upper side (DAPO's clip-higher: 0.28); None: epsilon
    loss_type: str = "dapo"
    importance_sampling_level: str = "token"  # or sequence (GSPO: the length-normalised sequence ratio)
    use_bias_correction_kl: bool = True  # the KL term times the importance ratio (TRL's default, DeepSeek-V3.2)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(
                f"importance_sampling_level must be token or sequence, got {self.importance_sampling_level!r}"
            )
        if not 0 <= self.epsilon < 1 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(
                f"need 0 <= epsilon < 1 and epsilon_high >= 0, got {self.epsilon!r}, {self.epsilon_high!r}"
            )


@register_objective(
    "tokens", options=TokenOptions, description="the clipped ratio of completion tokens (text policies)"
)
class TokenObjective(Objective):
    """Reads from the batch: transitions (Completions), advantages [B] and weights [B]."""

    modality = "text"
    supports_sharding = True

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        self.consistency: dict[str, float] = {}
        self.tokens_per_row, self.max_length = 1.0, 1

    @classmethod
    def check(cls, options: Any, config: Any, plan: Any, method: str) -> None:
        """Nothing beyond its options (text runs have no plan)."""

    def prepare(self, batch: Batch) -> None:
        completions = batch.transitions
        self.tokens_per_row = float(completions.mask.sum()) / max(len(completions), 1)
        self.max_length = completions.mask.shape[1]

    def begin_update(self, velocity, batch: Batch, optimizer_steps: int) -> None:
        """The rollout-vs-update consistency of the log-probs, on one micro-batch before any step."""
        self.consistency = {}
        source = batch.transitions if len(batch) else batch.rollout  # every process makes this pass (fsdp)
        if len(source) == 0:
            return
        with torch.no_grad():
            part = source.select(torch.arange(min(len(source), self.context.micro_batch)))
            logp = velocity(part)
        diff = (logp - part.logp.to(logp)).abs()[part.mask]
        self.consistency = {
            "consistency/max_abs_logp_diff": float(diff.max()) if diff.numel() else 0.0,
            "consistency/first_ratio_mean": float(torch.exp(logp - part.logp.to(logp))[part.mask].mean()),
        }

    def loss(self, velocity, batch: Batch, micro: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict]:
        options = self.options
        part = batch.transitions.select(micro)
        reference = self.reference_pass(lambda: velocity(part))
        logp = velocity(part)
        aggregation = LOSS_TYPES[options.loss_type]
        scale = {
            "token-mean": self.tokens_per_row,
            "seq-mean-token-sum-norm": self.max_length,
            "seq-mean-token-mean": 1.0,
        }
        old = part.logp.to(logp)
        current = logp
        if options.importance_sampling_level == "sequence":  # GSPO: each token takes its sequence's ratio
            mean = ((logp - old) * part.mask).sum(dim=1) / part.mask.sum(dim=1).clamp_min(1)
            current = old + mean.unsqueeze(1).expand_as(logp)
        log_ratio = current - old
        kl_values = None
        if reference is not None:
            kl_values = kl_estimate(logp, reference.detach(), "k3")
            if options.use_bias_correction_kl:  # the unbiased reverse-KL gradient
                kl_values = kl_values * torch.exp(log_ratio)
        loss, stats = policy_loss(
            current,  # the token's own log-prob, or its old one plus the sequence's mean log-ratio
            old,
            batch.advantages[micro].to(logp),
            mask=part.mask,
            loss="clip",
            loss_options={"eps_low": options.epsilon, "eps_high": options.epsilon_high},
            kl_values=kl_values,
            beta=self.context.beta,
            aggregation=aggregation,
            normalizer=normalizer * scale[aggregation],
            max_length=self.max_length,
        )
        return loss, {**stats, **self.consistency}

    def idle_loss(self, velocity, batch: Batch) -> torch.Tensor:
        """The forwards of a loss on one completion, with zero gradient (keeps fsdp/zero in step)."""
        part = (batch.transitions if len(batch) else batch.rollout).select(torch.arange(1))
        self.reference_pass(lambda: velocity(part))
        return velocity(part).sum() * 0
