"""TempFlow-GRPO (arXiv 2508.04324): ODE trunk, one-step SDE probes per step, noise-aware step weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plan import Plan, StepSpec, Tail
from ..sde import sde_mean_std
from .common import GridConfig, require
from .registry import Method, register_method


@dataclass
class TempFlowGrpoConfig(GridConfig):
    num_steps: int = 10
    group_size: int = 4  # seeds (trunks) per prompt
    probes: int = 6  # SDE probes branching off the trunk at each probed step
    probe_steps: tuple[int, ...] | None = None  # default: every step but the last (TempFlow-GRPO's code)
    noise_level: float = 0.7
    noise_aware: bool = True  # weight step i's loss by its transition std, normalised to mean 1
    tail_solver: str = "euler"
    unbiased: bool = False  # each step's z-score with the n - 1 std (Flow-GRPO's convention: biased)
    eps: float = 1e-4  # added to that std

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.probes >= 2, f"probes must be at least 2 to compare them, got {self.probes!r}")
        if self.probe_steps is not None:
            self.probe_steps = tuple(int(s) for s in self.probe_steps)
            require(
                all(0 <= s < self.num_steps for s in self.probe_steps),
                f"probe_steps must lie in [0, {self.num_steps}), got {self.probe_steps}",
            )


def noise_aware_step_weights(stds: torch.Tensor) -> torch.Tensor:
    """TempFlow-GRPO (arXiv 2508.04324): step i's loss weight is proportional to its transition
    std sigma_i * sqrt(-dt_i), normalised to mean 1, so that late (low-noise) steps, whose log-prob
    gradients are largest, do not dominate."""
    stds = torch.as_tensor(stds, dtype=torch.float64).flatten()
    if len(stds) == 0 or not bool((torch.isfinite(stds) & (stds > 0)).all()):
        raise ValueError(f"step stds must be positive and finite, got {stds.tolist()}")
    return (stds / stds.mean()).float()


def noise_aware_weights(sigmas: torch.Tensor, steps: list[int], form: str, noise_level: float) -> dict[int, float]:
    """The noise-aware weight of each of `steps` on the grid `sigmas`, mean 1 over them."""
    stds = []
    for i in steps:
        _, std = sde_mean_std(torch.zeros(1, 1), torch.zeros(1, 1), sigmas[i], sigmas[i + 1], form, noise_level)
        stds.append(float(std))
    weights = noise_aware_step_weights(torch.tensor(stds))
    return {i: float(w) for i, w in zip(steps, weights)}


def make_plan(config: TempFlowGrpoConfig, iteration: int = 0) -> Plan:
    sigmas = config.sigmas()
    probed = range(max(config.num_steps - 1, 1)) if config.probe_steps is None else config.probe_steps
    weights = (
        noise_aware_weights(sigmas, sorted(probed), config.sde or "flow_grpo", config.noise_level)
        if config.noise_aware
        else {i: 1.0 for i in probed}
    )
    steps = tuple(
        StepSpec(
            "ode",
            probes=config.probes,
            sde=config.sde or "flow_grpo",
            noise_level=config.noise_level,
            trained=True,
            weight=weights[i],
        )
        if i in weights
        else StepSpec("ode")
        for i in range(config.num_steps)
    )
    return Plan(
        sigmas,
        steps,
        tails=(Tail(1, config.tail_solver),),
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="tempflow_grpo",
    )


def credit_options(config: TempFlowGrpoConfig, iteration: int = 0) -> dict:
    return {"unbiased": config.unbiased, "eps": config.eps}


METHOD = register_method(
    Method(
        "tempflow_grpo",
        "ODE trunk with one-step SDE probes finished by ODE: a process reward per step, noise-aware step weights",
        "TempFlow-GRPO, arXiv 2508.04324",
        TempFlowGrpoConfig,
        make_plan,
        "probe",
        credit_options,
    )
)
