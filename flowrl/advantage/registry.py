"""The advantage-estimator registry: `fn(rewards [N], group_ids [N], **options) -> advantages [N]`
registered by name with its options dataclass, so users can add their own (one file each)."""

from __future__ import annotations

from flowrl.registry import Registry

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register  # decorator: @register_advantage("name", options=OptionsDataclass)
get_advantage = ADVANTAGES.lookup
