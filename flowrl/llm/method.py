"""Text methods: how completions are sampled and grouped (TRL's GRPOConfig names). The loss side
(epsilon, loss_type, importance_sampling_level) is the `tokens` objective's."""

from __future__ import annotations

from dataclasses import dataclass, field

from flowrl.registry import Registry

TEXT_METHODS = Registry("text method")
SCALE_REWARDS = {"group": "group", "batch": "batch", "none": "none"}
BUDGETS = ("uniform", "knapsack")  # samples per prompt: num_generations each, or Knapsack RL's allocation


@dataclass
class TextGrpoOptions:
    num_generations: int = 8  # completions per prompt (the group)
    temperature: float = 1.0  # sampling temperature; log-probs are taken at it
    top_p: float = 1.0
    max_completion_length: int = 32  # new tokens at most; longer completions are truncated
    stop: list[str] = field(default_factory=list)  # stop strings besides EOS
    advantage: str = "grpo"  # the estimator (grpo, dr_grpo, rloo, ngrpo; spo: a per-prompt value, no groups needed)
    scale_rewards: str = "group"  # grpo's std: group, batch or none (Dr. GRPO)
    mask_truncated_completions: bool = False  # truncated completions take no gradient (DAPO)
    resample_rounds: int = 0  # DAPO's dynamic sampling: redraw prompts for tied groups, up to this many rounds
    eval_size: int = 200  # held-out prompts per evaluation, answered greedily
    budget: str = "uniform"  # or knapsack: num_generations per prompt on average, shared out by success rate
    budget_min: int = 2  # knapsack: the first samples of every prompt, which estimate its success rate
    budget_max: int | None = None  # knapsack: samples per prompt at most; None: 4 x num_generations

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 to compare completions, got {self.num_generations!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_completion_length < 1 or self.eval_size < 1:
            raise ValueError("max_completion_length and eval_size must be positive")
        if self.resample_rounds < 0:
            raise ValueError(f"resample_rounds must not be negative, got {self.resample_rounds!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {list(SCALE_REWARDS)}, got {self.scale_rewards!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {list(BUDGETS)}, got {self.budget!r}")
        if self.budget_max is None:
            self.budget_max = 4 * self.num_generations
        if not 1 <= self.budget_min <= self.num_generations <= self.budget_max:
            raise ValueError(
                f"need 1 <= budget_min <= num_generations <= budget_max, got {self.budget_min!r}, "
                f"{self.num_generations!r}, {self.budget_max!r}"
            )
        if self.budget == "knapsack" and self.resample_rounds:
            raise ValueError("budget=knapsack already moves samples away from tied groups: set resample_rounds=0")
        self.stop = [str(s) for s in self.stop]


TEXT_METHODS.register(
    "grpo", options=TextGrpoOptions, description="a group of sampled completions per prompt, group-relative advantages"
)(TextGrpoOptions)


def estimator_options(options: TextGrpoOptions) -> dict:
    """The advantage estimator's options: scale_rewards is grpo's std scope."""
    return {"std_scope": SCALE_REWARDS[options.scale_rewards]} if options.advantage == "grpo" else {}
