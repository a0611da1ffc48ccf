"""Flow-GRPO (Liu et al., arXiv 2505.05470): SDE sampling everywhere, a fraction of steps trained."""

from __future__ import annotations

from dataclasses import dataclass

from ..ode import check_solver
from ..plan import Plan
from .common import ChainCredit, GridConfig, chain_credit_options, chain_step, require
from .registry import Method, register_method


@dataclass
class FlowGrpoConfig(ChainCredit, GridConfig):
    num_steps: int = 10  # training rollouts use 10 steps (evaluation: the eval_steps key)
    group_size: int = 24
    noise_level: float = 0.7  # a in sigma_t = a sqrt(t / (1 - t))
    timestep_fraction: float = 0.99  # train the first int(num_steps * fraction) steps (9 of 10)
    solver: str = "euler"  # noise_level 0 only: the ODE solver of the deterministic rollouts (DiffusionNFT: dpmpp_2m)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction!r}")
        require(
            self.noise_level >= 0,
            f"noise_level must be >= 0 (0: deterministic ODE steps, for objective=matching or nft), got {self.noise_level!r}",
        )
        check_solver(self.solver)
        require(
            self.noise_level == 0 or self.solver == "euler",
            f"solver={self.solver!r} applies to deterministic rollouts (noise_level=0); with noise_level={self.noise_level!r} every step is an SDE step",
        )


def trained_count(num_steps: int, fraction: float) -> int:
    return max(1, int(num_steps * fraction))


def make_plan(config: FlowGrpoConfig, iteration: int = 0) -> Plan:
    trained = trained_count(config.num_steps, config.timestep_fraction)
    steps = tuple(
        chain_step(config.noise_level, config.solver, trained=i < trained, form=config.sde or "flow_grpo")
        for i in range(config.num_steps)
    )
    return Plan(
        config.sigmas(),
        steps,
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="flow_grpo",
    )


def credit_options(config: FlowGrpoConfig, iteration: int = 0) -> dict:
    return chain_credit_options(config, "batch")  # Flow-GRPO: per-prompt mean, std over the whole batch


METHOD = register_method(
    Method(
        "flow_grpo",
        "SDE sampling at every step, the first steps trained, prompt-group advantages",
        "Flow-GRPO, arXiv 2505.05470",
        FlowGrpoConfig,
        make_plan,
        "chain",
        credit_options,
    )
)
