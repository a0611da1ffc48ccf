"""Reward models. Pointwise: score(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B];
pairwise: compare(images_a, images_b, prompts) -> Tensor[B], the probability that a is preferred.

`flowrl.rewards.load(name, device=...)` builds one by name (`flowrl rewards` lists them); heavy models
are imported and loaded only then, so importing this package is cheap and never downloads.
"""

from .base import InvalidRewardError, PairwiseReward, PointwiseReward, check_images, check_scores, is_pairwise
from .combine import RewardScores, RewardSet, parse_reward_spec
from .pairwise import BradleyTerry
from .registry import FunctionReward, available, load, register_reward
from .toyshapes import ToyShapesReward

__all__ = [
    "BradleyTerry",
    "FunctionReward",
    "InvalidRewardError",
    "PairwiseReward",
    "PointwiseReward",
    "RewardScores",
    "RewardSet",
    "ToyShapesReward",
    "available",
    "check_images",
    "check_scores",
    "is_pairwise",
    "load",
    "parse_reward_spec",
    "register_reward",
]
