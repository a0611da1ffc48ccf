"""MixGRPO (Li et al., arXiv 2507.21802): SDE only in a sliding window, ODE elsewhere; and its Flash variant."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plan import Plan, StepSpec
from .common import (
    ChainCredit,
    GridConfig,
    chain_credit_options,
    chain_step,
    compressed_indices,
    require,
    sliding_window_start,
)
from .registry import Method, register_method


@dataclass
class MixGrpoConfig(ChainCredit, GridConfig):
    grid: str = "time_shift"  # its official code's grid
    num_steps: int = 25
    group_size: int = 12
    share_noise: bool = True
    window: int = 4  # SDE (and trained) steps
    stride: int = 1  # the window moves this many steps ...
    interval: int = 25  # ... every this many iterations, from noisy towards clean
    max_start: int | None = None  # window_end=clamp: the last window start (default: num_steps - window)
    # roll_back (MixGRPO's code): the window ends before step num_steps - 2, so it shrinks over the last
    # starts (and is empty at start num_steps - 2), then starts over at step 0; clamp: the start stops
    # at max_start and the window keeps its size, training the last steps from then on
    window_end: str = "roll_back"
    noise_level: float = 0.7
    solver: str = "euler"  # ODE solver outside the window

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            1 <= self.window <= self.num_steps,
            f"window must be in [1, num_steps={self.num_steps}], got {self.window!r}",
        )
        require(
            self.noise_level >= 0,
            f"noise_level must be >= 0 (0: deterministic ODE steps with `solver`, for objective=matching or nft), got {self.noise_level!r}",
        )
        require(
            self.stride >= 0 and self.interval >= 1,
            f"stride must be >= 0 and interval >= 1, got {self.stride!r}, {self.interval!r}",
        )
        require(self.window_end in WINDOW_ENDS, f"window_end must be one of {WINDOW_ENDS}, got {self.window_end!r}")
        require(
            self.window_end == "clamp" or self.num_steps >= 3,
            f"window_end=roll_back ends the window before step num_steps - 2, so it needs num_steps >= 3 (got "
            f"{self.num_steps}); use window_end=clamp",
        )
        if self.max_start is not None:
            require(
                0 <= self.max_start <= self.num_steps - self.window,
                f"max_start must be in [0, {self.num_steps - self.window}], got {self.max_start!r}",
            )

    def window_bounds(self, iteration: int) -> tuple[int, int]:
        """[start, end) of the SDE window at `iteration`."""
        if self.window_end == "clamp":
            limit = self.num_steps - self.window if self.max_start is None else self.max_start
            start = sliding_window_start(iteration, self.stride, self.interval, limit)
            return start, start + self.window
        last = self.num_steps - 2  # MixGRPO's max_timesteps: the window ends before it
        block = max(iteration, 0) // self.interval
        start = 0 if self.stride == 0 else self.stride * (block % (last // self.stride + 1))
        return start, max(start, min(start + self.window, last))


@dataclass
class MixGrpoFlashConfig(MixGrpoConfig):
    interval: int = 20  # MixGRPO-Flash's scripts: the window moves every 20 iterations
    compression: float | None = None  # share of the steps after the window that DPM-Solver++ keeps (0.4; Flash*: 0.2)
    fixed_window: bool = False  # Flash*: the window stays at the first steps
    after_solver: str = "dpmpp_2m"
    # respaced (MixGRPO-Flash's code: a fresh time-shifted grid of int((N - end + 1) compression) points from the
    # window's end to 0) or subset (about compression of the grid's own points after the window)
    post_grid: str = "respaced"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compression is None:
            self.compression = 0.2 if self.fixed_window else 0.4
        require(0 < self.compression <= 1, f"compression must be in (0, 1], got {self.compression!r}")
        require(self.post_grid in POST_GRIDS, f"post_grid must be one of {POST_GRIDS}, got {self.post_grid!r}")


WINDOW_ENDS = ("roll_back", "clamp")
POST_GRIDS = ("respaced", "subset")


def respaced_tail(sigma: float, count: int, shift: float) -> torch.Tensor:
    """`count` (at least 2) sigmas from `sigma` down to 0, time-shifted uniform in t: the t whose
    shift is `sigma`, linspace(t, 0, count), shifted back (MixGRPO-Flash's post-window grid)."""
    t = sigma / (shift - (shift - 1) * sigma)  # the inverse of shift t / (1 + (shift - 1) t)
    ts = torch.linspace(t, 0, max(count, 2), dtype=torch.float64)
    tail = (shift * ts / (1 + (shift - 1) * ts)).to(torch.float32)
    tail[0] = sigma  # exactly the window's end
    return tail


def window_steps(config: MixGrpoConfig, start: int, end: int) -> list[StepSpec]:
    """SDE trained steps inside [start, end), ODE steps elsewhere; at noise level 0 the window's
    steps are trained ODE steps of the same solver (deterministic rollouts)."""
    window = chain_step(config.noise_level, config.solver, trained=True, form=config.sde or "flow_grpo")
    return [window if start <= i < end else StepSpec("ode", solver=config.solver) for i in range(config.num_steps)]


def make_plan(config: MixGrpoConfig, iteration: int = 0) -> Plan:
    steps = window_steps(config, *config.window_bounds(iteration))
    return Plan(
        config.sigmas(),
        tuple(steps),
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="mix_grpo",
    )


def make_flash_plan(config: MixGrpoFlashConfig, iteration: int = 0) -> Plan:
    start, end = (0, config.window) if config.fixed_window else config.window_bounds(iteration)
    steps = window_steps(config, start, end)
    sigmas = config.sigmas()
    if config.post_grid == "subset":
        points = compressed_indices(end, config.num_steps, config.compression)
        for here, there in zip(points, points[1:]):
            steps[here] = StepSpec("ode", solver=config.after_solver, next_index=there)
    elif end < config.num_steps:
        count = int(max((config.num_steps - end + 1) * config.compression, 1))  # the code's num_post_steps
        tail = respaced_tail(float(sigmas[end]), count, config.shift)
        sigmas = torch.cat([sigmas[:end], tail])
        steps = steps[:end] + [StepSpec("ode", solver=config.after_solver)] * (len(tail) - 1)
    return Plan(
        sigmas,
        tuple(steps),
        group_size=config.group_size,
        share_noise=config.share_noise,
        final=config.final,
        method="mix_grpo_flash",
        info={"window_start": start},
    )


def credit_options(config: MixGrpoConfig, iteration: int = 0) -> dict:
    return chain_credit_options(config, "group")


METHOD = register_method(
    Method(
        "mix_grpo",
        "SDE and training only inside a sliding window of steps, ODE elsewhere",
        "MixGRPO, arXiv 2507.21802",
        MixGrpoConfig,
        make_plan,
        "chain",
        credit_options,
    )
)
FLASH = register_method(
    Method(
        "mix_grpo_flash",
        "MixGRPO with the ODE part after the window solved by DPM-Solver++ (2M) on a compressed grid",
        "MixGRPO, arXiv 2507.21802",
        MixGrpoFlashConfig,
        make_flash_plan,
        "chain",
        credit_options,
    )
)
