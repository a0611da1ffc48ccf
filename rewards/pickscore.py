"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic preferences, loaded as its
authors do with transformers (processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, model
yuvalkirstain/PickScore_v1); score = logit_scale.exp() * cos(image_embeds, text_embeds)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import check_images
from .clip_common import (
    check_batch_size,
    looks_like_path,
    preprocess,
    resolve_device,
    resolve_dtype,
    score_in_batches,
    transform_from_hf_processor,
)

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _source(value: str | os.PathLike, what: str) -> str:
    """A hub id as is, or a local directory that must exist (named in the error when missing)."""
    value = os.path.expanduser(os.fspath(value))
    if os.path.isdir(value):
        return value
    if looks_like_path(value) or os.path.exists(value):
        raise FileNotFoundError(
            f"PickScore {what} directory not found: {value!r} (expected a save_pretrained folder or a hub id such as {PICKSCORE_MODEL!r})"
        )
    return value


def _embeds(output: Any) -> torch.Tensor:
    """Projected embeddings from get_*_features: a tensor (transformers 4) or an output whose
    pooler_output holds them (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PickScoreReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> PickScore [B] (about 18-24 for real images).

    Images are preprocessed on tensors exactly as the CLIP image processor does (shortest edge
    resize, bicubic with antialiasing, centre crop, normalise); prompts are tokenised with
    padding and truncation to the text model's length (77), as the authors do."""

    name = "pickscore"

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoModel, AutoProcessor

        self.batch_size = check_batch_size(batch_size)
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.processor = AutoProcessor.from_pretrained(_source(processor, "processor"))
        loaded = AutoModel.from_pretrained(_source(model, "model"))
        # exp(logit_scale) read in float32 before any cast: in bf16 exp(4.6052) is 99.0, not 100.0
        self.logit_scale = float(loaded.logit_scale.detach().float().exp())
        self.model = loaded.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.transform = transform_from_hf_processor(self.processor.image_processor)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)  # 77 for PickScore

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """PickScore of each image with its prompt: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = preprocess(images, self.transform, self.device, self.dtype)  # [b, 3, 224, 224]
        text = self.processor.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        image_embeds = F.normalize(
            _embeds(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1
        )  # [b, D]
        text_embeds = F.normalize(_embeds(self.model.get_text_features(**text)).float(), dim=-1)  # [b, D]
        return self.logit_scale * (image_embeds * text_embeds).sum(dim=-1)  # [b]

    __call__ = score
