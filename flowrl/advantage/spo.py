"""Single-stream Policy Optimization's persistent baseline (SPO, arXiv 2509.13232).

No groups: each prompt keeps a Beta(alpha, beta) estimate of its success rate across
iterations. A sample's advantage is r - v with v = alpha / (alpha + beta) taken before the
update; advantages are then normalised over the whole batch. The tracker forgets at rate rho per
observation; SPO ties rho to the policy's drift on that prompt, rho = 2^(-D / D_half) clipped to
[rho_min, rho_max], which `observe` applies when given the drift D (a KL), else it uses rho_max.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .registry import register_advantage


class SpoTracker:
    """Per-prompt Beta value tracker for rewards in [0, 1]; state_dict() makes it resumable."""

    def __init__(
        self,
        prior_mean: float = 0.5,
        prior_strength: float = 1.0,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        drift_half_life: float = 0.06,
    ) -> None:
        if not 0 <= prior_mean <= 1:
            raise ValueError(f"prior_mean must lie in [0, 1], got {prior_mean!r}")
        if prior_strength <= 0:
            raise ValueError(f"prior_strength must be positive, got {prior_strength!r}")
        if not 0 < rho_min <= rho_max <= 1:
            raise ValueError(f"need 0 < rho_min <= rho_max <= 1, got {rho_min!r}, {rho_max!r}")
        self.prior = (prior_mean * prior_strength, (1 - prior_mean) * prior_strength)
        self.rho_min, self.rho_max, self.drift_half_life = rho_min, rho_max, drift_half_life
        self.state: dict[Hashable, tuple[float, float]] = {}

    def value(self, key: Hashable) -> float:
        alpha, beta = self.state.get(key, self.prior)
        return alpha / (alpha + beta)

    def forgetting(self, drift: float | None) -> float:
        if drift is None:
            return self.rho_max
        return min(self.rho_max, max(self.rho_min, 2.0 ** (-float(drift) / self.drift_half_life)))

    def observe(self, key: Hashable, reward: float, drift: float | None = None) -> None:
        alpha, beta = self.state.get(key, self.prior)
        rho = self.forgetting(drift)
        self.state[key] = (rho * alpha + reward, rho * beta + (1 - reward))

    def state_dict(self) -> dict:
        return {"state": dict(self.state), "prior": self.prior}

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state["state"])
        self.prior = tuple(state["prior"])


def spo_advantages(
    rewards: torch.Tensor,
    keys: Sequence[Hashable],
    tracker: SpoTracker,
    *,
    drift: Sequence[float] | None = None,
    eps: float = 1e-4,
    normalize: bool = True,
) -> torch.Tensor:
    """[N] r - v(prompt) with the value read before this batch updates the tracker, z-scored over
    the batch when `normalize`. The tracker then observes every reward (in order)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    keys = list(keys)
    if len(keys) != len(rewards):
        raise ValueError(f"got {len(keys)} prompt keys for {len(rewards)} rewards")
    if not bool(((rewards >= 0) & (rewards <= 1)).all()):
        raise ValueError(
            f"SPO's Beta tracker needs rewards in [0, 1], got values in [{float(rewards.min())}, {float(rewards.max())}]; rescale them first"
        )
    baseline = torch.tensor([tracker.value(k) for k in keys], dtype=torch.float64)
    for i, (key, reward) in enumerate(zip(keys, rewards.tolist())):
        tracker.observe(key, reward, None if drift is None else drift[i])
    advantages = rewards - baseline
    if normalize and len(advantages) > 1:
        std = advantages.std(unbiased=False)
        advantages = (advantages - advantages.mean()) / (std + eps) if float(std) > 0 else torch.zeros_like(advantages)
    return advantages.float()


@dataclass
class SpoOptions:
    eps: float = 1e-4
    normalize: bool = True  # z-score r - v over the batch


# stateful: the estimator needs a per-prompt tracker carried across iterations (the LLM adapter's).
@register_advantage(
    "spo",
    options=SpoOptions,
    stateful=True,
    description="SPO: r - a per-prompt Beta value tracked across iterations (arXiv 2509.13232)",
)
def spo(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    tracker: SpoTracker | None = None,
    drift: Sequence[float] | None = None,
    eps: float = 1e-4,
    normalize: bool = True,
) -> torch.Tensor:
    """The registry form of `spo_advantages`: group_ids are the prompt keys; a tracker is required."""
    if tracker is None:
        raise ValueError("the spo estimator keeps state across iterations: pass tracker=SpoTracker()")
    return spo_advantages(
        rewards, torch.as_tensor(group_ids).flatten().tolist(), tracker, drift=drift, eps=eps, normalize=normalize
    )
