"""Pieces the method modules share: config checks, windows, and the sigma grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..grid import GRIDS
from ..plan import FINAL_IMAGES, StepSpec
from ..sde import SDE_FORMS

# Bounds that catch a typo before a plan of that size is built (published runs: 10-50 steps, 8-24 samples).
MAX_STEPS = 1000
MAX_GROUP = 4096


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition holds (config validation)."""
    if not condition:
        raise ValueError(message)


def chain_step(noise_level: float, solver: str, trained: bool, form: str = "flow_grpo") -> StepSpec:
    """A step of an SDE chain: an SDE step of `form` at a positive noise level; at level 0 a
    deterministic ODE step of `solver` (trained ones record points for the matching objectives)."""
    if noise_level > 0:
        return StepSpec("sde", sde=form, noise_level=noise_level, trained=trained)
    return StepSpec("ode", solver=solver, trained=trained)


@dataclass
class GridConfig:
    """The sampling grid and group shared by every method."""

    num_steps: int = 10  # steps of a training rollout (fewer than for evaluation: denoising reduction)
    shift: float = 3.0  # SD3/FLUX timestep shift of the grid
    group_size: int = 8  # roots (chains, trees or anchors) per prompt
    share_noise: bool = False  # the roots of a prompt start from the same noise
    # the sigma grid: scheduler (diffusers' flow-matching scheduler, Flow-GRPO's) or time_shift
    # (shift t / (1 + (shift - 1) t) of a uniform t, the grid of DanceGRPO's code and those built on it)
    grid: str = "scheduler"
    # the form of the SDE steps: None (the method's own: flow_grpo or dance_grpo) or another of
    # flow_grpo, dance_grpo, cps (coefficients-preserving; the noise level is its eta, at most 1)
    sde: str | None = None
    # the image an SDE step into sigma 0 leaves: sample (mean + noise, Flow-GRPO's) or clean (the
    # step's clean estimate x - sigma v, which DanceGRPO's and BranchGRPO's code score)
    final: str = "sample"

    def __post_init__(self) -> None:
        require(
            int(self.num_steps) == self.num_steps and 1 <= self.num_steps <= MAX_STEPS,
            f"num_steps must be an integer in [1, {MAX_STEPS}], got {self.num_steps!r}",
        )
        require(self.shift > 0, f"shift must be positive, got {self.shift!r}")
        require(self.grid in GRIDS, f"grid must be one of {list(GRIDS)}, got {self.grid!r}")
        require(self.final in FINAL_IMAGES, f"final must be one of {FINAL_IMAGES}, got {self.final!r}")
        require(self.sde is None or self.sde in SDE_FORMS, f"sde must be one of {list(SDE_FORMS)}, got {self.sde!r}")
        require(
            int(self.group_size) == self.group_size and 1 <= self.group_size <= MAX_GROUP,
            f"group_size must be an integer in [1, {MAX_GROUP}], got {self.group_size!r}",
        )

    def sigmas(self) -> torch.Tensor:
        return GRIDS[self.grid](self.num_steps, self.shift)


@dataclass
class ChainCredit:
    """The credit options of a chain method: its leaf rewards go through one advantage estimator."""

    advantage: str = "grpo"  # the advantage estimator (flowrl.advantage; grpo, dr_grpo, rloo, ngrpo)
    std_scope: str | None = None  # grpo's std: group, batch or none; None: the method's default
    unbiased: bool | None = None  # grpo's std with n - 1 (TRL, verl); None: the estimator's default (biased)
    eps: float | None = None  # added to the std (grpo, ngrpo); None: the estimator's default (1e-4)


def chain_credit_options(config: ChainCredit, default_std_scope: str) -> dict:
    """The chain rule's options: the estimator and its own options. `std_scope` is grpo's option;
    left unset it takes the method's default for grpo and is not passed to other estimators."""
    options = {
        key: getattr(config, key) for key in ("std_scope", "unbiased", "eps") if getattr(config, key) is not None
    }
    if config.std_scope is None and config.advantage == "grpo":
        options["std_scope"] = default_std_scope
    return {"estimator": config.advantage, "estimator_options": options}


def sliding_window_start(iteration: int, stride: int, interval: int, max_start: int) -> int:
    """MixGRPO's window start: moves by `stride` steps every `interval` iterations, up to max_start."""
    return min(stride * (max(iteration, 0) // interval), max_start)


def compressed_indices(start: int, end: int, ratio: float) -> list[int]:
    """Grid indices from start to end (both included) keeping about ratio of the steps between them."""
    steps = max(1, round(ratio * (end - start)))
    points = torch.linspace(start, end, steps + 1).round().long().unique().tolist()
    return [int(p) for p in points]
