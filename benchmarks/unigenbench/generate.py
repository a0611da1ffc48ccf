"""UniGenBench images: N per prompt, named `{index}_{k}.png` as the official protocol does, with
fixed seeds, in batches, resumable (an image already on disk is not drawn again)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .types import BenchPrompt

IMAGES_PER_PROMPT = 4  # the official protocol


def image_name(index: int, k: int) -> str:
    return f"{index}_{k}.png"


OFFICIAL_SEED = 3407  # the official inference script seeds image k of every prompt with 3407 + k


def image_seed(seed: int, index: int, k: int, seeds: str = "flowrl") -> int:
    """The noise seed of image k of prompt `index`: a function of these alone, so a resumed or
    partial run draws the same image; seeds="official": 3407 + k for every prompt."""
    if seeds == "official":
        return OFFICIAL_SEED + k
    return ((seed * 1_000_003 + index) * 1_009 + k) % (2**62)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write [3, H, W] in [0, 1] as an 8-bit PNG atomically (a crash leaves no half file)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(partial, format="PNG")
    os.replace(partial, path)


def generate_images(
    policy,
    prompts: list[BenchPrompt],
    out_dir: str | Path,
    images_per_prompt: int = IMAGES_PER_PROMPT,
    seed: int = 0,
    steps: int = 28,
    guidance: float = 4.5,
    shift: float = 3.0,
    batch_size: int = 4,
    progress: bool = True,
    seeds: str = "flowrl",
    grid: str = "scheduler",
) -> dict[str, int]:
    """Draw the images of `prompts` into out_dir that are not there yet; returns counts
    {"generated", "existing"}."""
    from flowrl.generate import generate

    if images_per_prompt < 1 or batch_size < 1:
        raise ValueError(
            f"images_per_prompt and batch_size must be at least 1, got {images_per_prompt} and {batch_size}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [(p, k) for p in prompts for k in range(images_per_prompt)]
    todo = [(p, k) for p, k in wanted if not (out_dir / image_name(p.index, k)).is_file()]
    bar = tqdm(total=len(todo), desc="generating", unit="image", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = generate(
            policy,
            [p.text for p, _ in chunk],
            [image_seed(seed, p.index, k, seeds) for p, k in chunk],
            steps=steps,
            guidance=guidance,
            shift=shift,
            batch_size=batch_size,
            grid=grid,
        )
        for (p, k), image in zip(chunk, images):
            save_png(image, out_dir / image_name(p.index, k))
        bar.update(len(chunk))
    bar.close()
    return {"generated": len(todo), "existing": len(wanted) - len(todo)}
