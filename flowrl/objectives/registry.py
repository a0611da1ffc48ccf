"""The objective registry: how advantages become a loss, one class per entry with its options."""

from __future__ import annotations

from flowrl.registry import Registry

OBJECTIVES = Registry("objective")
register_objective = OBJECTIVES.register  # decorator: @register_objective("name", options=OptionsDataclass)
get_objective = OBJECTIVES.lookup
