"""TempFlow-GRPO (arXiv 2508.04324): ODE trunk, one-step SDE probes per step, noise-aware step weights."""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, StepSpec, Tail
from .common import GridConfig, require
from .credit import probe_credit, noise_aware_weights
from .registry import Method, register_method


@dataclass
class TempFlowGrpoConfig(GridConfig):
    num_steps: int = 10
    group_size: int = 4  # seeds (trunks) per prompt
    probes: int = 6  # SDE probes branching off the trunk at each probed step
    probe_steps: tuple[int, ...] | None = None  # default: every step
    noise_level: float = 0.7
    noise_aware: bool = True  # weight step i's loss by its transition std, normalised to mean 1
    tail_solver: str = "euler"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.probes >= 2, f"probes must be at least 2 to compare them, got {self.probes!r}")
        if self.probe_steps is not None:
            self.probe_steps = tuple(int(s) for s in self.probe_steps)
            require(all(0 <= s < self.num_steps for s in self.probe_steps), f"probe_steps must lie in [0, {self.num_steps}), got {self.probe_steps}")


def make_plan(config: TempFlowGrpoConfig, iteration: int = 0) -> Plan:
    sigmas = config.sigmas()
    probed = range(config.num_steps) if config.probe_steps is None else config.probe_steps
    weights = noise_aware_weights(sigmas, sorted(probed), "flow_grpo", config.noise_level) if config.noise_aware else {i: 1.0 for i in probed}
    steps = tuple(
        StepSpec("ode", probes=config.probes, sde="flow_grpo", noise_level=config.noise_level, trained=True, weight=weights[i]) if i in weights else StepSpec("ode")
        for i in range(config.num_steps)
    )
    return Plan(sigmas, steps, tails=(Tail(1, config.tail_solver),), group_size=config.group_size, share_noise=config.share_noise, method="tempflow_grpo")


def credit(rollout, rewards, config: TempFlowGrpoConfig, iteration: int = 0):
    return probe_credit(rollout, rewards)


METHOD = register_method(Method("tempflow_grpo", "ODE trunk with one-step SDE probes finished by ODE: a process reward per step, noise-aware step weights", "TempFlow-GRPO, arXiv 2508.04324", TempFlowGrpoConfig, make_plan, credit))
