"""HPSv2 / HPSv2.1 human preference score (Wu et al. 2023), on open_clip without the hpsv2 package.

The HPS checkpoints (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt` in the hub repo xswu/HPSv2)
are `torch.save({"state_dict": <open_clip ViT-H-14 CLIP state dict>, ...})`; the score is the
cosine of the normalised image and text features, `diag(image_features @ text_features.T)` with
no logit scale, as `hpsv2.img_score.score` computes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .base import check_images, to_pil
from .clip_common import (
    check_batch_size,
    checkpoint_file,
    empty_scores,
    load_open_clip,
    normalized_features,
    score_in_batches,
)

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_NAMES = {"v2.0": "hpsv2.0", "v2.1": "hpsv2.1"}
BACKENDS = ("open_clip", "hpsv2")


class HPSReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> HPS [B] (a cosine, typically 0.2-0.35).

    backend="open_clip" (default) runs the checkpoint on open_clip with batched tensor
    preprocessing; backend="hpsv2" calls the optional hpsv2 package on 8-bit PIL images (slow:
    it reloads the checkpoint on every call), for cross-checking only."""

    def __init__(
        self,
        version: str = "v2.1",
        checkpoint: str | None = None,
        architecture: str = "ViT-H-14",
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        backend: str = "open_clip",
    ) -> None:
        if version not in HPS_FILES:
            raise ValueError(f"HPS version must be one of {sorted(HPS_FILES)}, got {version!r}")
        if backend not in BACKENDS:
            raise ValueError(f"HPS backend must be one of {BACKENDS}, got {backend!r}")
        self.name = HPS_NAMES[version]
        self.version, self.backend = version, backend
        self.batch_size = check_batch_size(batch_size)
        if backend == "hpsv2":
            self._init_hpsv2_package(checkpoint, device, dtype)
            return
        path = checkpoint_file(checkpoint, HPS_REPO, HPS_FILES[version], what=f"HPS {version}")
        # HPS was trained from laion2B ViT-H-14 (plain GELU) and evaluates with its "light
        # augmentation" transform: long side to 224, zero padding, resized as a float tensor.
        self.clip = load_open_clip(
            architecture, path, device, dtype, quick_gelu=False, resize_mode="longest", clamp=False
        )

    def _init_hpsv2_package(self, checkpoint: str | None, device, dtype) -> None:
        try:
            from hpsv2 import img_score
        except ImportError as error:
            raise ImportError(
                f"HPSReward(backend='hpsv2') needs the hpsv2 package, which is not installed or failed to import ({error}); "
                "install it with `pip install 'flowrl-toolkit[hpsv2]'` (it pins old libraries) "
                "or use the default backend='open_clip', which needs no extra package"
            ) from None
        if device is not None or dtype is not None:
            warnings.warn(
                "HPSReward(backend='hpsv2'): the hpsv2 package picks its own device (cuda when available) "
                f"and precision (amp); device={device!r} and dtype={dtype!r} are ignored",
                stacklevel=3,
            )
        self._img_score = img_score  # img_score.score(image, prompt, cp=..., hps_version=...) -> [score]
        self._checkpoint = checkpoint

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """HPS of each image against its prompt: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        if images.shape[0] == 0:
            return empty_scores()
        if self.backend == "hpsv2":
            return self._score_hpsv2_package(images, list(prompts))
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = normalized_features(self.clip, images, prompts)  # [b, D] each, unit norm
        return (image * text).sum(dim=-1)  # [b]: the diagonal of image @ text.T

    def _score_hpsv2_package(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pictures = to_pil(images)
        try:
            values = [
                float(self._img_score.score(picture, prompt, cp=self._checkpoint, hps_version=self.version)[0])
                for picture, prompt in zip(pictures, prompts)
            ]
        except FileNotFoundError as error:
            raise RuntimeError(
                f"HPSReward(backend='hpsv2'): the hpsv2 package could not find a file it ships ({error}); the PyPI "
                "wheel lacks its tokenizer vocabulary (bpe_simple_vocab_16e6.txt.gz). Install hpsv2 from its source "
                "repository, or use the default backend='open_clip' (the same checkpoint and scores, no package)"
            ) from None
        return torch.tensor(values, dtype=torch.float32)

    __call__ = score
