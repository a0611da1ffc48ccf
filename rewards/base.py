"""The reward interface: what crosses the boundary, and the checks on both sides of it.

Pointwise rewards have `score(images, prompts) -> Tensor[B]`; pairwise ones have
`compare(images_a, images_b, prompts) -> Tensor[B]`, the probability that a is preferred.
Images are float tensors in [0, 1] of shape [B, 3, H, W]; each model resizes and normalises them
the way it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

INVALID_POLICIES = ("error", "drop")


@runtime_checkable
class PointwiseReward(Protocol):
    name: str

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class PairwiseReward(Protocol):
    name: str

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def is_pairwise(reward: object) -> bool:
    """True for a reward that compares two images (it has `compare` and no `score`)."""
    return callable(getattr(reward, "compare", None)) and not callable(getattr(reward, "score", None))


def reward_name(reward: object) -> str:
    return str(getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__)


class InvalidRewardError(ValueError):
    """A reward returned the wrong shape, or NaN/inf values; names the reward and the samples."""


def check_images(images: torch.Tensor, prompts: Sequence[str], name: str) -> None:
    """Fail with a message naming the reward if `images` is not a float [B, 3, H, W] batch in
    [0, 1] with one prompt per image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"reward {name!r}: expected images as a float tensor [B, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"reward {name!r}: expected float images in [0, 1], got dtype {images.dtype}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"reward {name!r}: {images.shape[0]} images but {len(prompts)} prompts")
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"reward {name!r}: expected images in [0, 1], got values in [{low:.3g}, {high:.3g}]")


def check_scores(values: object, count: int, name: str, on_invalid: str = "error") -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scores [count] on the CPU, valid mask [count]) from a reward's raw output.

    The wrong number of values always fails. NaN or inf values fail naming the reward and the
    sample indices, or with `on_invalid="drop"` come back as 0 with valid=False, so the caller can
    leave those samples out of the update."""
    if on_invalid not in INVALID_POLICIES:
        raise ValueError(f"on_invalid must be one of {INVALID_POLICIES}, got {on_invalid!r}")
    try:
        scores = torch.as_tensor(values).detach().to("cpu", torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidRewardError(f"reward {name!r} returned {type(values).__name__}, not numbers ({error})") from None
    if scores.ndim > 1 and scores.numel() == count:
        scores = scores.reshape(count)  # [B, 1] is a common and harmless shape
    if scores.ndim != 1 or scores.shape[0] != count:
        raise InvalidRewardError(
            f"reward {name!r} returned shape {tuple(scores.shape)}; expected [{count}] (one value per image)"
        )
    valid = torch.isfinite(scores)
    if on_invalid == "error":
        raise_if_invalid(valid, name)
    return torch.where(valid, scores, torch.zeros_like(scores)), valid


def raise_if_invalid(valid: torch.Tensor, name: str, what: str = "samples") -> None:
    """InvalidRewardError naming the reward and the indices (of `what`) where `valid` is False."""
    if not bool(valid.all()):
        bad = torch.nonzero(~valid).flatten().tolist()
        shown = ", ".join(map(str, bad[:20])) + (" ..." if len(bad) > 20 else "")
        raise InvalidRewardError(
            f"reward {name!r} returned NaN or inf for {what} {shown} of {len(valid)} (set reward_invalid=drop to leave them out of the update)"
        )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, H, W, 3] uint8 arrays (rounded, clamped) for models that read 8-bit pixels."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list:
    """PIL RGB images, for processors that take them (8-bit, as a saved image would be)."""
    from PIL import Image

    return [Image.fromarray(array) for array in to_uint8(images)]
