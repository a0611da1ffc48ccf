"""G2RPO (arXiv 2510.01982): singular stochastic sampling and multi-granularity advantage integration."""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, StepSpec, Tail
from .common import GridConfig, require
from .registry import Method, register_method

TAIL_SCHEDULES = ("lead", "clamped")


@dataclass
class G2rpoConfig(GridConfig):
    grid: str = "time_shift"  # its official code's grid
    num_steps: int = 16
    group_size: int = 1  # anchors (ODE trajectories from one noise) per prompt
    sde_steps: tuple[int, ...] = tuple(range(8))  # steps where a group branches off the anchor
    probes: int = 12  # group size G at each of those steps
    tail_strides: tuple[int, ...] = (1, 2)  # ODE finishes at these granularities (G2RPO's code: 1 and 2)
    noise_level: float = 0.7
    tail_solver: str = "euler"
    # lead (its code): one stride-1 step after the probe, then strides, then straight to sigma 0 from the
    # last point a stride would not overshoot; clamped: strides from the probe, the last one cut at sigma 0
    tail_schedule: str = "lead"
    unbiased: bool = True  # each granularity's z-score with the n - 1 std (its code's torch.std)
    eps: float = 1e-8  # added to that std

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sde_steps = tuple(int(s) for s in self.sde_steps)
        self.tail_strides = tuple(int(s) for s in self.tail_strides)
        require(
            all(0 <= s < self.num_steps for s in self.sde_steps),
            f"sde_steps must lie in [0, {self.num_steps}), got {self.sde_steps}",
        )
        require(self.probes >= 2, f"probes must be at least 2, got {self.probes!r}")
        require(
            self.tail_schedule in TAIL_SCHEDULES,
            f"tail_schedule must be one of {TAIL_SCHEDULES}, got {self.tail_schedule!r}",
        )
        require(
            len(self.tail_strides) >= 1 and all(s >= 1 for s in self.tail_strides),
            f"tail_strides must be positive, got {self.tail_strides}",
        )


def make_plan(config: G2rpoConfig, iteration: int = 0) -> Plan:
    steps = tuple(
        StepSpec(
            "ode", probes=config.probes, sde=config.sde or "flow_grpo", noise_level=config.noise_level, trained=True
        )
        if i in config.sde_steps
        else StepSpec("ode")
        for i in range(config.num_steps)
    )
    lead = config.tail_schedule == "lead"
    tails = tuple(Tail(s, config.tail_solver, lead=lead) for s in config.tail_strides)
    return Plan(
        config.sigmas(),
        steps,
        tails=tails,
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="g2rpo",
    )


def credit_options(config: G2rpoConfig, iteration: int = 0) -> dict:
    return {"unbiased": config.unbiased, "eps": config.eps}


METHOD = register_method(
    Method(
        "g2rpo",
        "one SDE step per group off an ODE anchor, finished at several ODE granularities whose advantages are summed",
        "G2RPO, arXiv 2510.01982",
        G2rpoConfig,
        make_plan,
        "probe",
        credit_options,
    )
)
