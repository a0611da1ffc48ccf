"""Surrogate objectives on log importance ratios log(pi / pi_old), per element (token, step or
sequence). Each returns (loss to minimise, clipped mask) with the shape of its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import register_loss


@dataclass
class ClipRange:
    eps_low: float = 0.2
    eps_high: float | None = None  # None: eps_low


@dataclass
class GspoClipRange:
    eps_low: float = 3e-4
    eps_high: float | None = 4e-4


@dataclass
class RegressionOptions:
    scale: float = 1.0


@register_loss("clip", options=ClipRange)
def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float = 0.2, eps_high: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with asymmetric bounds [1 - eps_low, 1 + eps_high] (DAPO's
    clip-higher when eps_high > eps_low): -min(rho A, clip(rho) A). The mask marks elements whose
    gradient the clip removed."""
    eps_high = eps_low if eps_high is None else eps_high
    if eps_low < 0 or eps_high < 0 or eps_low >= 1:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low!r}, eps_high={eps_high!r}")
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    return loss, (clipped > unclipped).detach()


@register_loss("gspo", options=GspoClipRange)
def gspo_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float = 3e-4, eps_high: float | None = 4e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (arXiv 2507.18071): the clipped surrogate on a sequence-level ratio; pass the log of
    s_i = exp(mean_t log(pi/pi_old)) from `sequence_log_ratio`. Its clip range is tiny (3e-4, 4e-4)."""
    return clipped_surrogate(log_ratio, advantages, eps_low=eps_low, eps_high=eps_high)


@register_loss("reg", options=RegressionOptions)
def regression_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, *, scale: float = 1.0, group_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression to the advantage in the spirit of Reg-GRPO (DeepVideo-R1, arXiv 2506.07464): no
    clip, no min; the centred log-ratio, divided by `scale`, is regressed onto the advantage:
    ((log rho - mean_group log rho) / scale - A)^2. Centring (over elements with equal
    `group_ids`, or none without them) makes the target invariant to a shared shift of the policy."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    centred = log_ratio
    if group_ids is not None:
        ids = torch.as_tensor(group_ids, device=log_ratio.device).expand_as(log_ratio).reshape(-1)
        _, dense = torch.unique(ids, return_inverse=True)
        flat = log_ratio.reshape(-1)
        sums = torch.zeros(int(dense.max()) + 1, dtype=flat.dtype, device=flat.device).index_add(0, dense, flat)
        counts = torch.zeros_like(sums).index_add(0, dense, torch.ones_like(flat))
        centred = (flat - (sums / counts)[dense]).reshape(log_ratio.shape)
    loss = (centred / scale - advantages) ** 2
    return loss, torch.zeros_like(loss, dtype=torch.bool)


def sequence_log_ratio(logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] GSPO's length-normalised sequence log-ratio, mean over each sequence's valid tokens."""
    mask = mask.to(logp.dtype)
    lengths = mask.sum(dim=-1)
    if bool((lengths == 0).any()):
        raise ValueError("a sequence has no valid tokens; its sequence ratio is undefined")
    return ((logp - logp_old) * mask).sum(dim=-1) / lengths
