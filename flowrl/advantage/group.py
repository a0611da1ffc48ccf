"""Group-relative estimators: GRPO and its variants (batch std, Dr.GRPO, RLOO, NGRPO).

Defaults follow Flow-GRPO: the biased (population) std and eps = 1e-4. TRL and verl use the
unbiased std; pass `unbiased=True` to match them. A group whose rewards are all equal gets
advantage 0 exactly (never NaN, whatever eps). Each estimator is registered with its options
dataclass and called as `fn(rewards [N], group_ids [N], **options) -> [N]`; clipping is not an
estimator's job (`flowrl.advantage.credit.clip_advantages` is the one place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .groups import check_rewards, group_count, group_mean_std, group_sum, zero_variance_mask
from .registry import register_advantage

STD_SCOPES = ("group", "batch", "none")


def _finish(advantages: torch.Tensor, rewards_in: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    advantages = torch.where(constant, torch.zeros_like(advantages), advantages)
    dtype = rewards_in.dtype if torch.is_floating_point(rewards_in) else torch.float32
    return advantages.to(dtype)


def _check_unbiased(rewards: torch.Tensor, dense: torch.Tensor, estimator: str) -> None:
    count = group_count(dense)
    if bool((count < 2).any()):
        small = torch.nonzero(count < 2).flatten().tolist()
        raise ValueError(
            f"{estimator} is undefined for groups of size 1 (groups {small[:10]} have one member); use larger groups or unbiased=False"
        )


@dataclass
class GrpoOptions:
    std_scope: str = "group"  # the std: over the group, the whole batch (Flow-GRPO) or none (Dr.GRPO)
    unbiased: bool = False  # the sample std (n - 1), as TRL and verl; Flow-GRPO's is biased
    eps: float = 1e-4

    def __post_init__(self) -> None:
        if self.std_scope not in STD_SCOPES:
            raise ValueError(f"std_scope must be one of {STD_SCOPES}, got {self.std_scope!r}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")


@dataclass
class NoOptions:
    """An estimator without options."""


@dataclass
class NgrpoOptions:
    reward_max: float = 1.0  # the virtual sample's reward
    eps: float = 1e-4

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")


@register_advantage(
    "grpo",
    options=GrpoOptions,
    description="GRPO: (r - group mean) / (std + eps), the std over the group, the batch or none",
)
def grpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    std_scope: str = "group",
    unbiased: bool = False,
    eps: float = 1e-4,
) -> torch.Tensor:
    """(r - group mean) / (std + eps), std over the group, the whole batch (Flow-GRPO's option) or
    none (Dr.GRPO)."""
    GrpoOptions(std_scope, unbiased, eps)
    values, dense = check_rewards(rewards, group_ids)
    constant = zero_variance_mask(values, dense)
    mean, std = group_mean_std(values, dense, unbiased=False)
    centred = values - mean
    if std_scope == "group":
        if unbiased:
            _check_unbiased(values, dense, "the unbiased group std")
            _, std = group_mean_std(values, dense, unbiased=True)
        advantages = centred / (std + eps)
    elif std_scope == "batch":
        if unbiased and len(values) < 2:
            raise ValueError("the unbiased batch std is undefined for a batch of one reward")
        batch_std = values.std(unbiased=unbiased) if len(values) > 1 else values.new_zeros(())
        advantages = centred / (batch_std + eps) if float(batch_std) + eps > 0 else torch.zeros_like(centred)
    else:
        advantages = centred
    return _finish(advantages, torch.as_tensor(rewards), constant)


@register_advantage("dr_grpo", options=NoOptions, description="Dr.GRPO: r - group mean (arXiv 2503.20783)")
def dr_grpo(rewards: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Dr.GRPO: r - group mean, no division by a std (arXiv 2503.20783)."""
    return grpo(rewards, group_ids, std_scope="none")


@register_advantage(
    "rloo", options=NoOptions, description="REINFORCE leave-one-out: r - the mean of the other members of the group"
)
def rloo(rewards: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out: r_i - mean of the other members of its group = n/(n-1) (r_i - mean)."""
    values, dense = check_rewards(rewards, group_ids)
    _check_unbiased(values, dense, "the leave-one-out baseline")
    count = group_count(dense)[dense]
    others = (group_sum(values, dense)[dense] - values) / (count - 1)
    return _finish(values - others, torch.as_tensor(rewards), zero_variance_mask(values, dense))


@register_advantage(
    "ngrpo",
    options=NgrpoOptions,
    description="NGRPO: a virtual maximum-reward sample joins each group (arXiv 2509.18851)",
)
def ngrpo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    reward_max: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """NGRPO (arXiv 2509.18851): a virtual sample with the maximum reward joins each group's
    statistics (mean and unbiased std over n + 1 values), so all-wrong groups still get a signal."""
    values, dense = check_rewards(rewards, group_ids)
    if bool((values > reward_max).any()):
        raise ValueError(f"NGRPO needs rewards <= reward_max={reward_max!r}, got max {float(values.max())!r}")
    count = group_count(dense) + 1
    mean = (group_sum(values, dense) + reward_max) / count
    squares = group_sum((values - mean[dense]) ** 2, dense) + (reward_max - mean) ** 2
    std = (squares / (count - 1)).sqrt()
    advantages = (values - mean[dense]) / (std[dense] + eps)
    constant = (std == 0)[dense]  # every member already at the maximum
    return _finish(advantages, torch.as_tensor(rewards), constant)
