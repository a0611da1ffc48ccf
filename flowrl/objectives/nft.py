"""objective=nft: DiffusionNFT's bounded negative-aware flow-matching loss on matching points,
optionally sampling with a slower average of the weights (its `old` policy)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from flowrl.adapters import Ema, ramped_decay
from flowrl.experience import Batch
from flowrl.losses.nft import nft_loss
from flowrl.samplers.matching import MatchingScore
from flowrl.samplers.plan import Plan
from flowrl.samplers.rollout import RolloutVelocity
from flowrl.sharding import load_full

from .base import ObjectiveContext
from .matching import PointsObjective
from .registry import register_objective

SAMPLERS = ("current", "ema", "old")
WEIGHTINGS = ("adaptive", "uniform")


@dataclass
class NftOptions:
    # DiffusionNFT's beta: how far the implicit policies v_old +- beta (v - v_old) move with the trained v
    nft_beta: float = 1.0
    # the weights that sample the rollouts and give v_old: current (the trained weights at the iteration's start),
    # ema (the run's EMA, `ema` > 0), or old (the paper's: an average of its own, moved after each iteration by old_decay)
    sampler: str = "current"
    # sampler=old: [rate, max, flat]; after each iteration old = d old + (1 - d) trained with d = min(rate (steps - flat), max),
    # 0 before `flat`, steps the optimizer steps so far (DiffusionNFT: [0.001, 0.5, 0]; its OCR run [0.0075, 0.999, 75])
    old_decay: list = field(default_factory=lambda: [0.001, 0.5, 0])
    # adaptive (the paper's: the squared clean-image error over its own mean absolute value) or uniform
    # (the plain mean squared velocity error; its first step is then exactly AWM's)
    weighting: str = "adaptive"

    def __post_init__(self) -> None:
        if not self.nft_beta > 0:
            raise ValueError(f"nft_beta must be positive, got {self.nft_beta!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}: expected one of {SAMPLERS}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}: expected one of {WEIGHTINGS}")
        decay = self.old_decay
        if not (
            isinstance(decay, (list, tuple))
            and len(decay) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in decay)
        ):
            raise ValueError(f"old_decay={decay!r}: expected three numbers [rate, max, flat]")
        if not (decay[0] >= 0 and 0 <= decay[1] < 1 and decay[2] >= 0):
            raise ValueError(f"old_decay={list(decay)!r}: expected rate >= 0, 0 <= max < 1 and flat >= 0")


@register_objective(
    "nft",
    options=NftOptions,
    description="DiffusionNFT: a bounded negative-aware flow-matching loss on final samples (chain methods)",
)
class NftObjective(PointsObjective):
    def __init__(self, options: NftOptions, context: ObjectiveContext) -> None:
        super().__init__(options, context)
        self.old = Ema(context.params, 0.0) if options.sampler == "old" else None

    @classmethod
    def check(cls, options: NftOptions, config: Any, plan: Plan, method: str) -> None:
        super().check(options, config, plan, method)
        if not config.advantage_clip > 0:
            raise ValueError(
                f"config key advantage_clip={config.advantage_clip!r}: objective=nft reads advantages as "
                "r = 1/2 + advantage / (2 advantage_clip), so it must be positive"
            )
        if options.sampler == "ema" and not config.ema > 0:
            raise ValueError(
                "objective option sampler='ema': ema samples with the moving average of the weights, so it needs "
                "ema > 0 (or objective.sampler=old, an average of its own)"
            )

    def value(self, score: MatchingScore) -> torch.Tensor:
        return score.velocity

    def lagged_sampler(self) -> Ema | None:
        return {"ema": self.context.ema, "old": self.old}.get(self.options.sampler)

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        sampler = self.lagged_sampler()
        return sampler.swapped_in(self.context.params) if sampler is not None else contextlib.nullcontext()

    def loss(
        self, velocity: RolloutVelocity, batch: Batch, micro: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        part, scored, old, kl = self.score_points(velocity, batch, micro)
        return nft_loss(
            scored.velocity,
            old,
            part.noise - part.x0,
            batch.advantages[micro],
            nft_beta=self.options.nft_beta,
            scale=self.context.advantage_clip,
            weight=batch.weights[micro].to(scored.velocity.device),
            normalizer=normalizer,
            kl_values=kl,
            beta=self.context.beta,
            sigma=part.sigma if self.options.weighting == "adaptive" else None,
        )

    def after_iteration(self, optimizer_steps: int) -> dict[str, float]:
        """sampler=old: move the sampling average towards the trained weights with the decay of the
        optimizer steps so far (DiffusionNFT's schedule)."""
        if self.old is None:
            return {}
        decay = ramped_decay(optimizer_steps, *self.options.old_decay)
        self.old.update(self.context.params, decay)
        return {"nft/sampler_decay": decay}

    def state_dict(self) -> dict[str, Any]:
        if self.old is None:
            return {}
        return {"nft_old": {n: v.detach().cpu().clone() for n, v in self.old.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        if self.old is None:
            return
        if "nft_old" not in state:
            raise ValueError(
                f"{where} has no objective.sampler=old average to resume (it was written by a run without it); "
                "use another out= or resume=false"
            )
        load_full(self.old.shadow, state["nft_old"])
