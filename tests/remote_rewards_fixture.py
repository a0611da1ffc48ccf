"""Cheap, deterministic rewards that tests/test_rewards_remote.py serves in a subprocess
(`python -m flowrl.rewards.serve remote_rewards_fixture:NAME`, with tests/ on PYTHONPATH)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch


def brightness_plus_length(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Mean brightness plus the prompt's length, so a mix-up of images or prompts shows.
    Computed in float64 so the value does not depend on how the batch was split."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.float64)
    return (images.double().mean(dim=(1, 2, 3)) + lengths).float()


def unreliable(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Brightness, but NaN for every odd prompt length, and an error (as from a broken model)
    when a prompt is "fail"."""
    if "fail" in prompts:
        raise RuntimeError("the model is broken on purpose")
    scores = images.double().mean(dim=(1, 2, 3)).float()
    odd = torch.tensor([len(p) % 2 == 1 for p in prompts])
    return torch.where(odd, torch.full_like(scores, float("nan")), scores)


class BrightnessPreference:
    """Pairwise: sigmoid(10 * (brightness(a) - brightness(b))), the chance a is preferred."""

    name = "brightness_preference"

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        difference = images_a.double().mean(dim=(1, 2, 3)) - images_b.double().mean(dim=(1, 2, 3))
        return torch.sigmoid(10 * difference).float()


class SlowBrightness:
    """Brightness after `seconds` of sleep; prints 'scoring' (flushed) when a batch arrives, so a
    test knows a request is in flight."""

    name = "slow_brightness"

    def __init__(self, seconds: float = 2.0) -> None:
        self.seconds = float(seconds)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        print("scoring", flush=True)
        time.sleep(self.seconds)
        return images.double().mean(dim=(1, 2, 3)).float()
