"""Save image batches as grids a person can look at."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4) -> Path:
    """Write images [B, 3, H, W] in [0, 1] as one PNG grid, upscaled `scale`x (nearest) to be legible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    torchvision.utils.save_image(images, str(path), nrow=nrow, padding=2, pad_value=0.5)
    return path
