"""ImageReward (Xu et al. 2023) through its own package, `image-reward` (import name ImageReward)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import check_images, to_pil
from .clip_common import empty_scores, resolve_device, resolve_dtype

EXTRA_MESSAGE = (
    "the 'imagereward' reward needs the optional extra: install with "
    "`pip install 'flowrl-toolkit[image-reward]'`. This extra pins an old timm, "
    "so it is kept out of the core install."
)


class ImageRewardReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> ImageReward [B] (standardised, about -2..2).

    Calls `ImageReward.load(model).score(prompt, image)` on 8-bit PIL images, one at a time as the
    package does. `model` is "ImageReward-v1.0" (downloaded by the package) or a checkpoint path.
    The package builds float32 inputs, so only float32 is supported."""

    name = "imagereward"

    def __init__(
        self,
        model: str = "ImageReward-v1.0",
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        download_root: str | None = None,
    ) -> None:
        try:
            import ImageReward as image_reward
        except ImportError:
            raise ImportError(EXTRA_MESSAGE) from None
        if resolve_dtype(dtype) != torch.float32:
            raise ValueError(
                f"ImageRewardReward runs in float32 only (the package feeds float32 inputs), got dtype {dtype!r}"
            )
        self.device = resolve_device(device)
        self.model = image_reward.load(model, device=str(self.device), download_root=download_root).eval()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ImageReward of each image with its prompt: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        if images.shape[0] == 0:
            return empty_scores()
        with torch.no_grad():
            values = [float(self.model.score(prompt, picture)) for prompt, picture in zip(prompts, to_pil(images))]
        return torch.tensor(values, dtype=torch.float32)

    __call__ = score
