"""A pairwise reward made from any pointwise one: Bradley-Terry on the score difference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import check_images, check_scores, reward_name


class BradleyTerry:
    """compare(a, b) = sigmoid((score(a) - score(b)) / temperature): the probability that a is
    preferred under a Bradley-Terry model whose strengths are exp(score / temperature)."""

    def __init__(self, inner, temperature: float = 1.0) -> None:
        if not callable(getattr(inner, "score", None)):
            raise ValueError(
                f"BradleyTerry needs a pointwise reward with score(images, prompts), got {type(inner).__name__}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.inner = inner
        self.temperature = float(temperature)
        self.name = f"pairwise:{reward_name(inner)}"

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images_a, prompts, self.name)
        check_images(images_b, prompts, self.name)
        count = images_a.shape[0]
        both = self.inner.score(torch.cat([images_a, images_b]), list(prompts) * 2)
        scores, _ = check_scores(both, 2 * count, reward_name(self.inner))
        return torch.sigmoid((scores[:count] - scores[count:]) / self.temperature)
