"""How update statistics reduce: over micro-batches and optimizer steps, then over processes.

One rule per key, used at both levels: `loss/*` are partial sums of each step's loss (averaged
over steps, and over processes, each holding its share of the global loss), `ratio/min` and
`ratio/max` take the extreme, `grad_norm` the largest step's (the same on every process), and
the rest are per-transition means weighted by transition counts.
"""

from __future__ import annotations

import torch


def reduction(key: str) -> str:
    """How a statistic reduces: loss, min, max, grad_norm or mean (per-transition weighted)."""
    if key.startswith("loss/"):
        return "loss"
    return {"ratio/min": "min", "ratio/max": "max", "grad_norm": "grad_norm"}.get(key, "mean")


class UpdateStats:
    """Accumulates one process's statistics over an update's micro-batches."""

    def __init__(self, optimizer_steps: int, transitions: int, inner_epochs: int) -> None:
        self.optimizer_steps, self.transitions, self.inner_epochs = optimizer_steps, transitions, inner_epochs
        self.values: dict[str, float] = {}

    def add(self, stats: dict[str, float], micro_size: int) -> None:
        """A micro-batch's loss statistics (its advantage stats are the credit's, reported exactly there)."""
        for key, value in stats.items():
            if key.startswith("advantage/"):
                continue
            kind = reduction(key)
            if kind == "loss":
                self.values[key] = self.values.get(key, 0.0) + value / self.optimizer_steps
            elif kind in ("min", "max"):
                pick = min if kind == "min" else max
                self.values[key] = pick(self.values.get(key, value), value)
            else:
                self.values[key] = self.values.get(key, 0.0) + value * micro_size / (
                    self.transitions * self.inner_epochs
                )

    def add_grad_norm(self, norm: float) -> None:
        self.values["grad_norm"] = max(self.values.get("grad_norm", 0.0), norm)


def combine_processes(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """One process's update statistics from every process's (stats, transition count)."""
    total = sum(count for _, count in parts) or 1
    combined: dict[str, float] = {}
    for key in dict.fromkeys(k for stats, _ in parts for k in stats):
        values = [stats.get(key, 0.0) for stats, _ in parts]
        kind = reduction(key)
        if kind == "loss":
            combined[key] = sum(values) / len(parts)
        elif kind in ("min", "max"):
            pick = min if kind == "min" else max
            combined[key] = pick(stats[key] for stats, _ in parts if key in stats)
        elif kind == "grad_norm":
            combined[key] = values[0]
        else:
            combined[key] = sum(v * count for v, (_, count) in zip(values, parts)) / total
    return combined


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Mean, std and max of the scored rewards of an iteration."""
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)),
        "reward/max": float(rewards.max()),
    }


def component_stats(components: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """reward/<name>/mean over every process's scored samples (NaN marks an invalid score)."""
    names = components[0] if components else {}
    return {f"reward/{name}/mean": float(torch.cat([c[name] for c in components]).nanmean()) for name in names}
