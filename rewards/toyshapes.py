"""The ToyShapes verifier as a pointwise reward: 1 when an image satisfies its prompt, partial otherwise."""

from __future__ import annotations

import torch

from flowrl.benchmarks.toyshapes.verify import verify

from .base import check_images


class ToyShapesReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B] in [0, 1]; runs on the CPU."""

    name = "toyshapes"

    def __init__(self, binary: bool = False):
        self.binary = binary  # True: reward only exact correctness, as the benchmark does

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_images(images, prompts, self.name)
        results = verify(images, prompts)
        values = [float(r.correct) if self.binary else r.score for r in results]
        return torch.tensor(values, dtype=torch.float32, device=images.device)

    __call__ = score
