"""The policy-loss registry: `fn(log_ratio, advantages, **options) -> (per-element loss, clipped
mask)` registered by name with its options dataclass, so users can add surrogate objectives."""

from __future__ import annotations

from flowrl.registry import Registry

LOSSES = Registry("policy loss")
register_loss = LOSSES.register  # decorator: @register_loss("name", options=OptionsDataclass)
get_loss = LOSSES.lookup
