"""BranchGRPO (arXiv 2509.06040): a tree of SDE splits with shared prefixes, depth-wise credit, pruning."""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, StepSpec
from .common import GridConfig, require
from .registry import Method, register_method


@dataclass
class BranchGrpoConfig(GridConfig):
    grid: str = "time_shift"  # its official code's grid
    num_steps: int = 20
    group_size: int = 1  # trees per prompt; one tree of 2^4 = 16 leaves by default
    split_steps: tuple[int, ...] = (0, 3, 6, 9)  # "dense" splits; also (0, 4, 8, 12), (0, 5, 10, 15)
    branch: int = 2
    eta: float = 0.3  # DanceGRPO's SDE
    split_noise_scale: float | None = 4.0  # s in (xi_0 + s eta_b) / sqrt(1 + s^2); None: independent
    fusion_beta: float = 0.0  # node value = softmax(beta * path logp)-weighted mean of leaf rewards; 0: plain mean
    unbiased: bool = False  # the std of each depth's z-score with n - 1
    eps: float = 1e-4  # added to that std
    width_pruning: int = 0  # keep gradients after the last split only for the b best and b worst leaves (0: off)
    depth_pruning: int = 0  # drop gradients of this many consecutive depths (0: off) ...
    depth_interval: int = 30  # ... a window that slides one depth every this many iterations
    # Mix variant: SDE only at split steps and inside this window of steps, ODE elsewhere.
    mix_window: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.split_steps = tuple(int(s) for s in self.split_steps)
        require(
            all(0 <= s < self.num_steps for s in self.split_steps),
            f"split_steps must lie in [0, {self.num_steps}), got {self.split_steps}",
        )
        require(self.branch >= 2, f"branch must be at least 2, got {self.branch!r}")
        require(self.eta > 0, f"eta must be positive, got {self.eta!r}")
        require(
            self.width_pruning >= 0 and self.depth_pruning >= 0 and self.depth_interval >= 1,
            "width_pruning, depth_pruning must be >= 0 and depth_interval >= 1",
        )


@dataclass
class BranchGrpoMixConfig(BranchGrpoConfig):
    mix_window: tuple[int, int] | None = (0, 4)  # [first, last) grid steps of the SDE window


def make_plan(config: BranchGrpoConfig, iteration: int = 0) -> Plan:
    sde_steps = set(range(config.num_steps))
    if config.mix_window is not None:
        first, last = config.mix_window
        require(
            0 <= first < last <= config.num_steps,
            f"mix_window must satisfy 0 <= first < last <= {config.num_steps}, got {config.mix_window}",
        )
        sde_steps = set(config.split_steps) | set(range(first, last))
    steps = tuple(
        StepSpec(
            "sde",
            sde=config.sde or "dance_grpo",
            noise_level=config.eta,
            branch=config.branch if i in config.split_steps else 1,
            trained=True,
        )
        if i in sde_steps
        else StepSpec("ode")
        for i in range(config.num_steps)
    )
    name = "branch_grpo" if config.mix_window is None else "branch_grpo_mix"
    return Plan(
        config.sigmas(),
        steps,
        group_size=config.group_size,
        share_noise=config.share_noise,
        split_noise_scale=config.split_noise_scale,
        method=name,
    )


def credit_options(config: BranchGrpoConfig, iteration: int = 0) -> dict:
    return {
        "beta": config.fusion_beta,
        "unbiased": config.unbiased,
        "eps": config.eps,
        "width_pruning": config.width_pruning,
        "depth_pruning": config.depth_pruning,
        "depth_interval": config.depth_interval,
        "iteration": iteration,
    }


METHOD = register_method(
    Method(
        "branch_grpo",
        "a branching SDE tree with shared prefixes, leaf rewards fused up the tree, depth-wise advantages, pruning",
        "BranchGRPO, arXiv 2509.06040",
        BranchGrpoConfig,
        make_plan,
        "tree",
        credit_options,
    )
)
MIX = register_method(
    Method(
        "branch_grpo_mix",
        "BranchGRPO with SDE only at split steps and in a window, ODE elsewhere",
        "BranchGRPO, arXiv 2509.06040",
        BranchGrpoMixConfig,
        make_plan,
        "tree",
        credit_options,
    )
)
