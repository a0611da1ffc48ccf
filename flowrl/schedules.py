"""Learning-rate schedules as plain functions of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, base: float, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warm-up over `warmup` steps, then `constant` or `cosine` decay to 10% of `base` at `total`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}")
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
