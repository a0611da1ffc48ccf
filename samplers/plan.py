"""Plans: what a rollout does at each step of a sigma grid.

A plan is one StepSpec per grid step. Every method of the toolkit (Flow-GRPO, MixGRPO, BranchGRPO,
TempFlow-GRPO, G2RPO, ...) is a plan generator plus a credit rule, so one executor runs them all.
The rollout state is a tree: each spine node steps by its StepSpec (ODE or SDE, splitting into
`branch` children); a step with `probes` also sends that many one-step SDE probes off the spine,
each finished deterministically by every ODE tail of the plan, to score that step alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .ode import check_solver
from .sde import DEFAULT_NOISE_LEVEL, check_form

SPLIT_NOISE = ("scaled", "correlated")
FINAL_IMAGES = ("sample", "clean")


@dataclass(frozen=True)
class StepSpec:
    """What every spine node does at one grid step.

    mode: "ode" or "sde". solver: the ODE solver of an ODE step. sde, noise_level: the SDE form and
    its noise level (a for flow_grpo, eta for dance_grpo) of SDE steps and probes. branch: children
    per node at an SDE step (> 1 splits the tree). probes: one-step SDE probes sent off the spine.
    trained: whether this step's SDE transitions (children or probes) enter the policy loss, and
    weight their loss weight. A trained ODE step without probes (like an SDE step at noise level 0)
    is deterministic: it records transitions without a log-probability (NaN), which only the
    matching objectives can train, as points drawn at its noise level. next_index: the grid index an ODE step lands on (default: the next
    one), so an ODE stretch can run on a coarser sub-grid.
    """

    mode: str = "ode"
    solver: str = "euler"
    sde: str = "flow_grpo"
    noise_level: float | None = None
    branch: int = 1
    probes: int = 0
    trained: bool = False
    weight: float = 1.0
    next_index: int | None = None

    def level(self) -> float:
        """The noise level, or the form's default when none was given."""
        return DEFAULT_NOISE_LEVEL[self.sde] if self.noise_level is None else float(self.noise_level)


@dataclass(frozen=True)
class Tail:
    """How probes are finished: an ODE solve on every `stride`-th grid point to the end.

    lead (G2RPO's code): one stride-1 step first, then strides of `stride`, and from the last point
    that a further stride would not overshoot straight to sigma 0 (scoring that point's clean
    estimate). Without it, strides from the probe's landing point, the last one clamped to the end.
    """

    stride: int = 1
    solver: str = "euler"
    lead: bool = False

    def next_index(self, index: int, start: int, last: int) -> int:
        """The grid index the tail lands on from `index`, for a probe that landed at `start`."""
        if not self.lead:
            return min(index + self.stride, last)
        candidate = start + 1 if index == start else index + self.stride
        return last if candidate + self.stride > last else candidate


@dataclass(frozen=True)
class Plan:
    """A full rollout recipe over `sigmas` ([T + 1], from 1 down to 0).

    group_size: independent roots (chains or trees) per prompt. share_noise: the roots of a prompt
    start from the same noise (DanceGRPO). split_noise_scale s and split_noise say how the
    children of a split draw their noise: "scaled" (BranchGRPO's code) draws s * eta_b, independent
    per child, while the log-probability keeps the step's own std (so it is not the density the
    child was drawn from, and a split edge's gradient is s^2 times the exact one); "correlated"
    draws (xi_0 + s * eta_b) / sqrt(1 + s^2) with xi_0 shared by the siblings: still standard
    normal per child, so the log-probability is exact. s = None draws plain independent noise.
    final: what an SDE step into sigma 0 leaves as the sample, "sample" (mean + std * noise) or
    "clean" (the step's clean estimate x - sigma v; ODE steps land there anyway).
    The plan holds no RNG state; the rollout takes a seed.
    """

    sigmas: torch.Tensor
    steps: tuple[StepSpec, ...]
    tails: tuple[Tail, ...] = (Tail(),)
    group_size: int = 1
    share_noise: bool = False
    split_noise_scale: float | None = None
    split_noise: str = "scaled"
    final: str = "sample"
    method: str = "custom"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def next_index(self, index: int) -> int:
        """The grid index the spine lands on after the step at `index`."""
        spec = self.steps[index]
        return index + 1 if spec.next_index is None else spec.next_index

    def visited(self) -> list[int]:
        """Grid indices the spine evaluates, in order."""
        out, index = [], 0
        while index < self.num_steps:
            out.append(index)
            index = self.next_index(index)
        return out

    def trained_steps(self) -> list[int]:
        """Spine-visited grid indices whose SDE transitions are trained."""
        return [i for i in self.visited() if self.steps[i].trained]

    def with_steps(self, **changes) -> Plan:
        """A copy with plan fields changed (validated again)."""
        return replace(self, **changes)


def validate(plan: Plan) -> None:
    """Raise ValueError naming the first inconsistent field of a plan."""
    sigmas = plan.sigmas
    if sigmas.ndim != 1 or len(sigmas) != len(plan.steps) + 1:
        raise ValueError(
            f"a plan needs len(sigmas) == len(steps) + 1, got {tuple(sigmas.shape)} sigmas for {len(plan.steps)} steps"
        )
    if not bool(torch.all(sigmas[1:] < sigmas[:-1])) or float(sigmas[0]) > 1 or float(sigmas[-1]) != 0:
        raise ValueError("plan sigmas must decrease strictly from at most 1 to exactly 0")
    if plan.group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {plan.group_size}")
    if plan.split_noise_scale is not None and plan.split_noise_scale < 0:
        raise ValueError(f"split_noise_scale must be >= 0 or None, got {plan.split_noise_scale}")
    if plan.final not in FINAL_IMAGES:
        raise ValueError(f"final must be one of {FINAL_IMAGES}, got {plan.final!r}")
    if plan.split_noise not in SPLIT_NOISE:
        raise ValueError(f"split_noise must be one of {SPLIT_NOISE}, got {plan.split_noise!r}")
    if not plan.tails:
        raise ValueError("a plan needs at least one tail to finish probes")
    for tail in plan.tails:
        check_solver(tail.solver)
        if tail.stride < 1:
            raise ValueError(f"tail stride must be at least 1, got {tail.stride}")
    for i, spec in enumerate(plan.steps):
        where = f"step {i} of the {plan.method} plan"
        if spec.mode not in ("ode", "sde"):
            raise ValueError(f"{where}: mode must be 'ode' or 'sde', got {spec.mode!r}")
        check_solver(spec.solver)
        check_form(spec.sde)
        if spec.branch < 1 or spec.probes < 0:
            raise ValueError(
                f"{where}: branch must be >= 1 and probes >= 0, got branch={spec.branch} probes={spec.probes}"
            )
        if spec.mode == "ode" and spec.branch != 1:
            raise ValueError(f"{where}: an ODE step is deterministic and cannot branch (branch={spec.branch})")
        if spec.level() < 0:
            raise ValueError(
                f"{where}: noise_level must be >= 0 (0: the deterministic Euler step), got {spec.noise_level}"
            )
        if spec.level() == 0 and (spec.branch > 1 or spec.probes > 0):
            raise ValueError(
                f"{where}: noise_level 0 makes the step deterministic, so it cannot branch or send probes "
                f"(got branch={spec.branch} probes={spec.probes}); give it a positive noise level"
            )
        if spec.next_index is not None:
            if spec.mode != "ode" or not i < spec.next_index <= len(plan.steps):
                raise ValueError(
                    f"{where}: next_index={spec.next_index} needs an ODE step and {i} < next_index <= {len(plan.steps)}"
                )


def identical_groups(plan: Plan) -> bool:
    """Whether a prompt's samples all come out the same: a shared start and no step that adds noise."""
    return plan.share_noise and plan.group_size > 1 and not any(is_stochastic(spec) for spec in plan.steps)


def deterministic_trained_steps(plan: Plan) -> list[int]:
    """Trained steps whose transitions have no log-probability: ODE steps without probes, SDE
    steps at noise level 0, and cps steps that end at sigma 0 (their std, sigma_next sin(.), is 0);
    only the matching objectives can train them."""

    def ends_clean(i: int, spec: StepSpec) -> bool:
        return spec.sde == "cps" and float(plan.sigmas[i + 1]) == 0.0

    return [
        i
        for i, spec in enumerate(plan.steps)
        if spec.trained and ((spec.mode == "ode" and spec.probes == 0) or spec.level() == 0 or ends_clean(i, spec))
    ]


def is_stochastic(spec: StepSpec) -> bool:
    """Whether a step draws noise: an SDE step or probes, at a positive noise level."""
    return (spec.mode == "sde" or spec.probes > 0) and spec.level() > 0
