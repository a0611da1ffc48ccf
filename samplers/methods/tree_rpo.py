"""Dynamic-TreeRPO (arXiv 2509.23352): a branching tree inside MixGRPO's sliding SDE window.

The paper's exact equations are not public; this implements the described mechanisms with explicit
parameters: a split at every window step (depth = window), ODE outside the window, and a noise
level rising linearly with depth from noise_low to noise_high.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, StepSpec
from .common import GridConfig, require, sliding_window_start
from .registry import Method, register_method


@dataclass
class TreeRpoConfig(GridConfig):
    num_steps: int = 25
    group_size: int = 1
    window: int = 4  # tree depth: one binary split per window step (16 leaves)
    branch: int = 2
    stride: int = 1
    interval: int = 25
    max_start: int | None = None
    noise_low: float = 0.5  # flow_grpo noise level at the first depth of the window ...
    noise_high: float = 0.9  # ... rising linearly to this at the last
    fusion_beta: float = 0.0
    unbiased: bool = False  # the std of each depth's z-score with n - 1
    eps: float = 1e-4  # added to that std

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.window <= self.num_steps, f"window must be in [1, {self.num_steps}], got {self.window!r}")
        require(
            0 < self.noise_low and 0 < self.noise_high,
            f"noise levels must be positive, got {self.noise_low!r}, {self.noise_high!r}",
        )
        require(self.branch >= 2, f"branch must be at least 2, got {self.branch!r}")


def make_plan(config: TreeRpoConfig, iteration: int = 0) -> Plan:
    limit = config.num_steps - config.window if config.max_start is None else config.max_start
    start = sliding_window_start(iteration, config.stride, config.interval, limit)
    steps = []
    for i in range(config.num_steps):
        depth = i - start
        if 0 <= depth < config.window:
            fraction = depth / max(config.window - 1, 1)
            level = config.noise_low + (config.noise_high - config.noise_low) * fraction
            steps.append(
                StepSpec("sde", sde=config.sde or "flow_grpo", noise_level=level, branch=config.branch, trained=True)
            )
        else:
            steps.append(StepSpec("ode"))
    return Plan(
        config.sigmas(),
        tuple(steps),
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="tree_rpo",
        info={"window_start": start},
    )


def credit_options(config: TreeRpoConfig, iteration: int = 0) -> dict:
    return {"beta": config.fusion_beta, "unbiased": config.unbiased, "eps": config.eps, "min_std": 0.0}


METHOD = register_method(
    Method(
        "tree_rpo",
        "a binary SDE tree inside a sliding window, noise rising with depth, ODE outside",
        "Dynamic-TreeRPO, arXiv 2509.23352",
        TreeRpoConfig,
        make_plan,
        "tree",
        credit_options,
    )
)
