"""Reward models: (images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B]."""

from .toyshapes import ToyShapesReward

__all__ = ["ToyShapesReward"]
