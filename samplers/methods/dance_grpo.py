"""DanceGRPO (Xue et al., arXiv 2505.07818): its constant-eta SDE, shared group noise, random steps trained."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plan import Plan, StepSpec
from .common import ChainCredit, GridConfig, chain_credit_options, require
from .registry import Method, register_method


@dataclass
class DanceGrpoConfig(ChainCredit, GridConfig):
    grid: str = "time_shift"  # its official code's grid
    final: str = "clean"  # its code scores the last step's clean estimate x - sigma v
    num_steps: int = 16
    group_size: int = 12
    share_noise: bool = True  # a group's samples start from one noise
    eta: float = 0.3
    timestep_fraction: float = 0.6  # the share of the steps (all but the last) trained, a random 60%
    seed: int = 0  # of the choice of trained steps
    # per_sample (DanceGRPO's code: each sample trains its own random subset of every step but the last)
    # or shared (one subset per iteration for all samples, drawn from all steps)
    step_choice: str = "per_sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction!r}")
        require(
            self.step_choice in STEP_CHOICES, f"step_choice must be one of {STEP_CHOICES}, got {self.step_choice!r}"
        )
        require(
            self.step_choice == "shared" or self.num_steps >= 2,
            "step_choice=per_sample trains steps before the last, so num_steps must be at least 2",
        )
        require(
            self.eta >= 0,
            f"eta must be >= 0 (0: deterministic Euler steps, for objective=matching or nft), got {self.eta!r}",
        )


STEP_CHOICES = ("per_sample", "shared")


def step_seed(config: DanceGrpoConfig, iteration: int) -> int:
    return config.seed * 1_000_003 + iteration


def make_plan(config: DanceGrpoConfig, iteration: int = 0) -> Plan:
    """per_sample: every step but the last records a trained transition, and the credit keeps a
    random share of each sample's; shared: the plan trains one random subset of all steps."""
    if config.step_choice == "per_sample":
        chosen = set(range(config.num_steps - 1))
    else:
        count = max(1, int(config.num_steps * config.timestep_fraction))
        generator = torch.Generator().manual_seed(step_seed(config, iteration))
        chosen = set(torch.randperm(config.num_steps, generator=generator)[:count].tolist())
    steps = tuple(
        StepSpec("sde", sde=config.sde or "dance_grpo", noise_level=config.eta, trained=i in chosen)
        for i in range(config.num_steps)
    )
    return Plan(
        config.sigmas(),
        steps,
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="dance_grpo",
    )


def credit_options(config: DanceGrpoConfig, iteration: int = 0) -> dict:
    options = chain_credit_options(config, "group")
    if config.step_choice == "per_sample":
        options.update(step_fraction=config.timestep_fraction, step_seed=step_seed(config, iteration))
    return options


METHOD = register_method(
    Method(
        "dance_grpo",
        "DanceGRPO's eta-SDE at every step, shared group noise, a random subset of steps trained",
        "DanceGRPO, arXiv 2505.07818",
        DanceGrpoConfig,
        make_plan,
        "chain",
        credit_options,
    )
)
