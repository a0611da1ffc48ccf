"""The advantage core: rewards (with group ids, or a tree) in, advantages out.

Pure tensor functions with no model inside, shared by the image trainer and the LLM adapter.
Estimators of the form fn(rewards [N], group_ids [N], **options) -> [N] live in a registry
(`register_advantage`, `get_advantage`) so users can add their own by name.
"""

from .budgets import knapsack_budgets, knapsack_value
from .credit import CREDIT_RULES, Credit, LearningSignal, assign_credit, check_credit, clip_advantages, learning_signal
from .group import STD_SCOPES, GrpoOptions, NgrpoOptions, dr_grpo, grpo, ngrpo, rloo
from .groups import group_sizes, zero_variance_mask
from .objectives import COMBINE_MODES, combine_objectives
from .preference import pairwise_win_rates, pref_grpo, win_rate_matrix
from .registry import ADVANTAGES, get_advantage, register_advantage
from .spo import SpoTracker, spo_advantages
from .steps import multi_granularity, noise_aware_step_weights
from .tree import FUSION_RULES, fuse_tree_rewards, leaf_ancestry, tree_advantages

__all__ = [
    "ADVANTAGES",
    "CREDIT_RULES",
    "Credit",
    "LearningSignal",
    "GrpoOptions",
    "NgrpoOptions",
    "assign_credit",
    "check_credit",
    "clip_advantages",
    "learning_signal",
    "COMBINE_MODES",
    "FUSION_RULES",
    "STD_SCOPES",
    "SpoTracker",
    "combine_objectives",
    "dr_grpo",
    "fuse_tree_rewards",
    "get_advantage",
    "group_sizes",
    "grpo",
    "knapsack_budgets",
    "knapsack_value",
    "leaf_ancestry",
    "multi_granularity",
    "ngrpo",
    "noise_aware_step_weights",
    "pairwise_win_rates",
    "pref_grpo",
    "register_advantage",
    "rloo",
    "spo_advantages",
    "tree_advantages",
    "win_rate_matrix",
    "zero_variance_mask",
]
