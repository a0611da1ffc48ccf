"""BranchGRPO (arXiv 2509.06040): a tree of SDE splits with shared prefixes, depth-wise credit, pruning."""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import SPLIT_NOISE, Plan, StepSpec
from .common import GridConfig, require
from .registry import Method, register_method


@dataclass
class BranchGrpoConfig(GridConfig):
    grid: str = "time_shift"  # its official code's grid
    final: str = "clean"  # its code scores the last step's clean estimate x - sigma v
    num_steps: int = 20
    group_size: int = 1  # trees per prompt; one tree of 2^4 = 16 leaves by default
    split_steps: tuple[int, ...] = (0, 3, 6, 9)  # "dense" splits; also (0, 4, 8, 12), (0, 5, 10, 15)
    branch: int = 2
    eta: float = 0.3  # DanceGRPO's SDE
    # Split children draw s * eta_b, independent, scored at the step's own std (BranchGRPO's code);
    # split_noise=correlated draws (xi_0 + s eta_b) / sqrt(1 + s^2), an exact density; None: plain noise.
    split_noise_scale: float | None = 4.0
    split_noise: str = "scaled"
    fusion_beta: float = 0.0  # each split's children weighted by softmax(beta * edge logp); 0: leaf mean
    unbiased: bool = True  # the std of each depth's z-score with n - 1 (its code's torch.std)
    eps: float = 1e-8  # added to that std
    min_std: float = 1e-6  # depths with a smaller std get advantage 0
    width_pruning: float = 0.0  # share of the leaves below the last split that keep gradients (its code: 0.5)
    depth_pruning: tuple[int, ...] = ()  # child depths whose transitions lose gradients (its example: 15..18) ...
    depth_interval: int = 30  # ... sliding one depth toward the root every this many iterations ...
    depth_stop: int | None = None  # ... until the shallowest reaches this depth (None: the last split step)
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
        self.depth_pruning = tuple(int(d) for d in self.depth_pruning)
        require(
            0 <= self.width_pruning <= 1, f"width_pruning is a share of leaves in [0, 1], got {self.width_pruning!r}"
        )
        require(
            all(1 <= d <= self.num_steps for d in self.depth_pruning),
            f"depth_pruning names child depths in [1, {self.num_steps}], got {self.depth_pruning}",
        )
        require(self.depth_interval >= 1, f"depth_interval must be at least 1, got {self.depth_interval!r}")
        require(self.split_noise in SPLIT_NOISE, f"split_noise must be one of {SPLIT_NOISE}, got {self.split_noise!r}")


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
        final=config.final,
        split_noise_scale=config.split_noise_scale,
        split_noise=config.split_noise,
        method=name,
    )


def credit_options(config: BranchGrpoConfig, iteration: int = 0) -> dict:
    return {
        "beta": config.fusion_beta,
        "unbiased": config.unbiased,
        "eps": config.eps,
        "min_std": config.min_std,
        "width_pruning": config.width_pruning,
        "depth_pruning": config.depth_pruning,
        "depth_interval": config.depth_interval,
        "depth_stop": max(config.split_steps) if config.depth_stop is None else config.depth_stop,
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
