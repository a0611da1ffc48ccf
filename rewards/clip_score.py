"""CLIP score: the cosine similarity of an open_clip model's image and prompt embeddings."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .base import check_images
from .clip_common import check_batch_size, load_open_clip, normalized_features, score_in_batches


class CLIPScoreReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> cos(image, prompt) [B] in [-1, 1].

    The raw cosine, neither scaled by 100 nor clipped at 0 (torchmetrics' CLIPScore is
    100 * max(cos, 0)). `pretrained` is an open_clip tag or a local checkpoint file; the default
    is OpenAI's ViT-L/14, built with QuickGELU as it was trained. quick_gelu=None takes the
    activation from the tag; set it for a local copy of QuickGELU weights (e.g. OpenAI's)."""

    name = "clip"

    def __init__(
        self,
        architecture: str = "ViT-L-14",
        pretrained: str | None = "openai",
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        quick_gelu: bool | None = None,
    ) -> None:
        if pretrained is None:
            raise ValueError(
                "CLIPScoreReward needs pretrained weights: an open_clip tag such as 'openai' or a checkpoint file, got None"
            )
        self.batch_size = check_batch_size(batch_size)
        if quick_gelu is None and os.path.isfile(os.path.expanduser(str(pretrained))):
            quick_gelu = architecture.endswith("-quickgelu") or None
            if quick_gelu is None:
                raise ValueError(
                    f"CLIPScoreReward(pretrained={pretrained!r}): a checkpoint file does not say its activation; pass "
                    "quick_gelu=True for OpenAI CLIP weights (trained with QuickGELU) or quick_gelu=False for LAION/open_clip ones"
                )
        self.clip = load_open_clip(architecture, pretrained, device, dtype, quick_gelu=quick_gelu)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its prompt: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = normalized_features(self.clip, images, prompts)  # [b, D] each, unit norm
        return (image * text).sum(dim=-1)  # [b]

    __call__ = score
