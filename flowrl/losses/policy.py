"""The policy loss the trainers call: surrogate + beta * KL, aggregated, with diagnostics."""

from __future__ import annotations

from typing import Any

import torch

from .aggregate import aggregate
from .kl import kl_estimate
from .registry import get_loss
from .surrogate import sequence_log_ratio


def _broadcast(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    advantages = torch.as_tensor(advantages, dtype=like.dtype, device=like.device)
    while advantages.ndim < like.ndim:
        advantages = advantages.unsqueeze(-1)
    return advantages.expand_as(like)


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    loss: str = "clip",
    loss_options: dict[str, Any] | None = None,
    sequence_level: bool = False,
    logp_ref: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    kl_values: torch.Tensor | None = None,
    beta: float = 0.0,
    aggregation: str = "token-mean",
    weight: torch.Tensor | None = None,
    normalizer: float | None = None,
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(scalar loss, stats) for log-probs of sampled elements under the current and old policy.

    Shapes: logp, logp_old, mask, weight [B, T] (tokens) or [M] (flow steps); advantages [B] or
    like logp. `sequence_level` (GSPO) turns each row into one element with the length-normalised
    sequence ratio. The KL term is beta * (kl_values if given, e.g. `gaussian_kl` of SDE means,
    else the `kl_estimator` of logp against logp_ref), aggregated like the policy term.
    """
    if logp.shape != logp_old.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and logp_old {tuple(logp_old.shape)} must have one shape")
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.bool()
    logp_old = logp_old.detach()
    if sequence_level:
        if logp.ndim != 2:
            raise ValueError(f"sequence_level needs [B, T] log-probs, got shape {tuple(logp.shape)}")
        log_ratio = sequence_log_ratio(logp, logp_old, mask)  # [B]
        element_mask = torch.ones_like(log_ratio, dtype=torch.bool)
        adv = torch.as_tensor(advantages, dtype=logp.dtype, device=logp.device)
        if adv.ndim == 2:
            adv = (adv * mask).sum(-1) / mask.sum(-1)
    else:
        log_ratio = logp - logp_old
        element_mask = mask
        adv = _broadcast(advantages, logp)
    per_element, clipped = get_loss(loss)(log_ratio, adv.detach(), **(loss_options or {}))
    options = dict(mode=aggregation, normalizer=normalizer, max_length=max_length)
    if sequence_level:
        options["mode"] = "token-mean"  # one element per sequence: a mean over sequences
    policy_term = aggregate(per_element, element_mask, weight=None if sequence_level else weight, **options)
    stats: dict[str, float] = {"loss/policy": float(policy_term.detach())}
    total = policy_term
    kl_mean = None
    if beta != 0 or kl_values is not None or logp_ref is not None:
        if kl_values is None:
            if logp_ref is None:
                raise ValueError("beta != 0 needs logp_ref (or precomputed kl_values)")
            kl_values = kl_estimate(logp, logp_ref.detach(), kl_estimator)
        kl_term = aggregate(
            kl_values, mask, mode=aggregation, weight=weight, normalizer=normalizer, max_length=max_length
        )
        kl_mean = float(kl_term.detach())
        stats["loss/kl"] = kl_mean
        total = total + beta * kl_term
    with torch.no_grad():
        valid = element_mask
        ratio = torch.exp(log_ratio.detach())[valid]
        lr = log_ratio.detach()[valid]
        a = adv.detach()[valid] if adv.shape == log_ratio.shape else adv.detach()
        stats.update(
            {
                "loss/total": float(total.detach()),
                "clip_fraction": float(clipped[valid].float().mean()) if ratio.numel() else 0.0,
                "approx_kl": float((0.5 * lr**2).mean()) if ratio.numel() else 0.0,
                "ratio/mean": float(ratio.mean()) if ratio.numel() else 1.0,
                "ratio/min": float(ratio.min()) if ratio.numel() else 1.0,
                "ratio/max": float(ratio.max()) if ratio.numel() else 1.0,
                "advantage/mean": float(a.float().mean()) if a.numel() else 0.0,
                "advantage/std": float(a.float().std(unbiased=False)) if a.numel() else 0.0,
            }
        )
    return total, stats
