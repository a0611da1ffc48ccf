"""What every objective gets from the trainer and what it gives back.

An objective is built once per run as `cls(options, context)`. Per iteration the trainer calls
`prepare(batch)` (after credit, without grad), `begin_update(velocity, batch, optimizer_steps)`
and `loss(velocity, batch, micro, normalizer) -> (loss, stats)` per micro-batch of the kept
transitions, then `after_iteration(optimizer_steps)`. The hooks with defaults here cover an
objective's own sampling weights and its state in checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flowrl.experience import Batch
from flowrl.samplers.plan import Plan
from flowrl.samplers.rollout import RolloutVelocity


@dataclass
class ObjectiveContext:
    """The parts of the run an objective reads."""

    params: dict[str, torch.nn.Parameter]  # the trainable parameters
    ema: Any  # the EMA of the weights (flowrl.adapters.Ema) or None
    reference: Any  # the frozen reference (flowrl.adapters.Reference) or None without a KL term
    beta: float  # weight of the KL to the reference
    loss: str  # the policy surrogate (flowrl.losses), for ratio objectives
    advantage_clip: float
    max_batch: int  # rows per model call
    micro_batch: int  # rows per forward/backward
    sample_shape: tuple[int, ...]
    root_seeds: Callable[[int, torch.Tensor], list[int]]  # (iteration, global roots) -> a seed per root

    @classmethod
    def of(
        cls, config: Any, params: dict, ema: Any, reference: Any, sample_shape: tuple[int, ...], root_seeds: Callable
    ) -> ObjectiveContext:
        """The context of a run with `config` (a TrainConfig)."""
        return cls(
            params,
            ema,
            reference,
            config.beta,
            config.loss,
            config.advantage_clip,
            config.max_batch,
            config.micro_batch,
            sample_shape,
            root_seeds,
        )


class Objective:
    """Defaults for the optional hooks; subclasses implement `loss` (and `prepare` when needed)."""

    trains_on_points = False  # trains on flow-matching points of final samples: chain methods only
    supports_sharding = False  # may run under fsdp=true or zero_stage

    def __init__(self, options: Any, context: ObjectiveContext) -> None:
        self.options, self.context = options, context

    @classmethod
    def check(cls, options: Any, config: Any, plan: Plan, method: str) -> None:
        """Cross-checks with the rest of the config and the method's plan, before any model loads."""
        if cls.trains_on_points and not all(s.branch == 1 and s.probes == 0 for s in plan.steps):
            raise ValueError(
                f"config key objective={config.objective!r}: needs one final sample per chain, but method {method!r} "
                "branches (trees or probes); use a chain method: flow_grpo, dance_grpo, mix_grpo or mix_grpo_flash"
            )

    def prepare(self, batch: Batch) -> None:
        """Add what the loss needs to the batch (no grad)."""

    def begin_update(self, velocity: RolloutVelocity, batch: Batch, optimizer_steps: int) -> None:
        """Before the update's first optimizer step (of `optimizer_steps`)."""

    def loss(
        self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def order(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The order in which an inner epoch visits the kept transitions (a permutation)."""
        return torch.randperm(len(batch), generator=generator)

    def micro_batches(self, batch: Batch, indices: torch.Tensor, size: int) -> list[torch.Tensor]:
        """One optimizer step's transitions cut into forward/backward passes of at most `size` rows."""
        return [m for m in indices.split(size) if len(m)]

    def idle_loss(self, velocity: RolloutVelocity, batch: Batch) -> torch.Tensor:
        """A loss with zero gradient through every parameter (keeps lockstep backends in step)."""
        raise NotImplementedError(f"{type(self).__name__} does not run under fsdp or zero_stage")

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The weights that sample the rollouts (the current ones unless the objective has its own)."""
        return contextlib.nullcontext()

    def after_iteration(self, optimizer_steps: int) -> dict[str, float]:
        """After an iteration's update; returns stats to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume the objective exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        """Resume from a checkpoint's state (`where` names it in errors)."""

    def reference_pass(self, score: Callable[[], Any]) -> Any:
        """score() under the reference policy, without grad; None when there is no KL."""
        if self.context.reference is None:
            return None
        with torch.no_grad(), self.context.reference.active():
            return score()
