"""JPEG (in)compressibility, DDPO's simplest rewards: the size of the image saved as a JPEG.

As ddpo-pytorch (`ddpo_pytorch/rewards.py`): 8-bit pixels (x * 255, rounded), PIL's JPEG encoder at
quality 95 with its default chroma subsampling, size in kB of 1000 bytes. `sign=+1` rewards large
files (incompressibility), `sign=-1` small ones (compressibility, minus the size). Exact sizes
depend on the libjpeg that Pillow was built with.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .base import check_images, to_uint8


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of an [H, W, 3] uint8 RGB image saved by PIL as a JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JPEGReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B]: sign * JPEG size in kB; CPU only."""

    def __init__(self, sign: float = 1.0, quality: int = 95) -> None:
        """sign: +1 rewards incompressibility (the size), -1 compressibility (minus the size);
        quality: the JPEG quality, 95 as DDPO."""
        if float(sign) not in (1.0, -1.0):
            raise ValueError(f"JPEGReward: sign must be +1 (incompressibility) or -1 (compressibility), got {sign!r}")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"JPEGReward: quality must be an int in [1, 100] (DDPO uses 95), got {quality!r}")
        self.sign = float(sign)
        self.quality = quality
        self.name = "jpeg_incompressibility" if self.sign > 0 else "jpeg_compressibility"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """sign * JPEG size in kB per image (float32 [B] on the CPU); the prompts are not used."""
        check_images(images, prompts, self.name)
        sizes = [jpeg_size_kb(array, self.quality) for array in to_uint8(images)]
        return self.sign * torch.tensor(sizes, dtype=torch.float32)

    __call__ = score
