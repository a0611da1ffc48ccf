"""DiffusionNFT's negative-aware flow-matching loss (arXiv 2509.16117), on matching points.

The rollout policy v_old and the trained one v define two implicit policies,
v+ = v_old + beta (v - v_old) and v- = v_old - beta (v - v_old). Each sample fits v+ to its
flow-matching target u = noise - x0 with weight r (how good it is, in [0, 1]) and v- with
weight 1 - r. Both terms are squares, so unlike a likelihood ratio a loser's loss is bounded
below: its minimiser is v = v_old + (2r - 1)(u - v_old) / beta, a finite step. At v = v_old
the gradient equals Advantage Weighted Matching's with advantage A = advantage_clip (2r - 1).

With `sigma` given, each term is the paper's adaptive form instead: the error of the clean image
it implies, x0_hat - x0 = -sigma (v_term - u), squared and divided by its own (detached) mean
absolute value, so every point and noise level pulls with a similar strength whatever its error.
"""

from __future__ import annotations

import torch

from .aggregate import aggregate


def optimality(advantages: torch.Tensor, scale: float) -> torch.Tensor:
    """r = 1/2 + A / (2 scale), clipped to [0, 1]: the advantage read as how likely a sample is
    better than its group (DiffusionNFT's normalised reward)."""
    if scale <= 0:
        raise ValueError(f"the advantage scale of DiffusionNFT's r must be positive, got {scale}")
    return (0.5 + 0.5 * advantages / scale).clamp(0.0, 1.0)


def nft_loss(
    velocity: torch.Tensor,
    old_velocity: torch.Tensor,
    target: torch.Tensor,
    advantages: torch.Tensor,
    *,
    nft_beta: float,
    scale: float,
    weight: torch.Tensor | None = None,
    normalizer: float | None = None,
    kl_values: torch.Tensor | None = None,
    beta: float = 0.0,
    sigma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(scalar loss, stats) over M points: velocity (with grad), old_velocity and target [M, ...],
    advantages [M]. The per-point loss is scaled by scale / nft_beta so that its first step is
    AWM's; it is aggregated like the policy losses (token-mean, `weight`, `normalizer`), plus
    beta times the aggregated `kl_values`. `sigma` [M] (the points' noise levels) switches to the
    adaptive weighting (module docstring)."""
    if nft_beta <= 0:
        raise ValueError(f"nft_beta must be positive, got {nft_beta}")
    dtype = torch.promote_types(velocity.dtype, torch.float32)  # at least float32: squares of small differences
    r = optimality(advantages.to(velocity.device, dtype), scale)
    old, target = old_velocity.detach().to(dtype), target.to(dtype)
    step = nft_beta * (velocity.to(dtype) - old)
    positive = term_error(old + step - target, sigma)
    negative = term_error(old - step - target, sigma)
    per_point = (r * positive + (1 - r) * negative) * (scale / nft_beta)
    policy_term = aggregate(per_point, weight=weight, normalizer=normalizer)
    total = policy_term
    stats = {"loss/policy": float(policy_term.detach()), "nft/r_mean": float(r.mean()) if len(r) else 0.5}
    if kl_values is not None:
        kl_term = aggregate(kl_values, weight=weight, normalizer=normalizer)
        stats["loss/kl"] = float(kl_term.detach())
        total = total + beta * kl_term
    stats["loss/total"] = float(total.detach())
    return total, stats


def term_error(error: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """[M] one implicit policy's loss from its velocity error [M, ...]: the mean square, or with
    `sigma` the adaptive form mean(d^2) / max(mean|d|, 1e-5) of the clean-image error d = sigma error,
    the denominator held constant."""
    if sigma is None:
        return error.pow(2).flatten(1).mean(1)
    clean = error.flatten(1) * sigma.to(error).view(-1, 1)
    scale = clean.detach().abs().mean(1).clamp_min(1e-5)
    return clean.pow(2).mean(1) / scale
