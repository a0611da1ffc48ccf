"""The advantage-estimator registry: `fn(rewards [N], group_ids [N], **options) -> advantages [N]`
registered by name, so users can add their own."""

from __future__ import annotations

from flowrl.registry import Registry

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register  # decorator: @register_advantage("name")
get_advantage = ADVANTAGES.lookup
