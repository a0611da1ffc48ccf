"""Save image batches as grids a person can look at, each image with its caption under it."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

CAPTION_HEIGHT = 14  # pixels of the caption strip under each image
CHAR_WIDTH = 6  # PIL's default bitmap font


def save_grid(
    images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4, captions: list[str] | None = None
) -> Path:
    """Write images [B, 3, H, W] in [0, 1] as one PNG grid, upscaled `scale`x (nearest) to be legible;
    with `captions` (one per image), each image's caption under it, cut to the image's width."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    if captions is None:
        torchvision.utils.save_image(images, str(path), nrow=nrow, padding=2, pad_value=0.5)
        return path
    if len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    from PIL import Image, ImageDraw

    pad, (height, width) = 2, images.shape[-2:]
    columns = min(nrow, len(images))
    rows = -(-len(images) // columns)
    cell_w, cell_h = width + pad, height + CAPTION_HEIGHT + pad
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    fits = max(1, width // CHAR_WIDTH)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = pad + (i % columns) * cell_w, pad + (i // columns) * cell_h
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        sheet.paste(Image.fromarray(array), (x, y))
        text = caption if len(caption) <= fits else caption[: fits - 1] + "~"
        draw.rectangle([x, y + height, x + width - 1, y + height + CAPTION_HEIGHT - 1], fill="white")
        draw.text((x + 1, y + height + 1), text, fill="black")
    sheet.save(path)
    return path
