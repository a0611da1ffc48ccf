"""Loss aggregation: from per-element losses [B, T] and a validity mask to one scalar.

- token-mean: sum over all valid tokens / number of valid tokens (DAPO, verl's default);
- seq-mean-token-mean: mean over each sequence's tokens, then over sequences (original GRPO);
- seq-mean-token-sum: sum over each sequence's tokens, mean over sequences;
- seq-mean-token-sum-norm: sum over all valid tokens / (B * max_length), the constant
  normaliser of Dr.GRPO (max_length defaults to T).
Images use token-mean over the trained steps ([M] losses with per-step weights).
`normalizer` replaces the denominator: compute it once for a whole accumulated batch (tokens,
sequences, or B * max_length) and micro-batches add up to exactly the full-batch loss.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "token-mean",
    *,
    weight: torch.Tensor | None = None,
    normalizer: float | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """One scalar from per-element values [B, T] (or [B]); see the module docstring for modes."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; known: {AGGREGATIONS}")
    if values.ndim == 1:
        values = values[:, None]
        mask = None if mask is None else mask[:, None]
        weight = None if weight is None else torch.as_tensor(weight, device=values.device)[:, None]
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    masked = torch.where(mask, values, torch.zeros_like(values))
    if weight is not None:
        masked = masked * weight
    if normalizer is not None and normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer!r}")
    if mode == "token-mean":
        return masked.sum() / (normalizer if normalizer is not None else mask.sum().clamp_min(1))
    if mode == "seq-mean-token-sum-norm":
        length = max_length if max_length is not None else values.shape[1]
        return masked.sum() / (normalizer if normalizer is not None else values.shape[0] * length)
    per_sequence = masked.sum(dim=1)
    if mode == "seq-mean-token-mean":
        per_sequence = per_sequence / mask.sum(dim=1).clamp_min(1)
    return per_sequence.sum() / (normalizer if normalizer is not None else values.shape[0])
