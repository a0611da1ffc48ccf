"""Draw ToyShapes scenes with PIL: the pretraining data and the verifier's ground truth.

Sizes, positions and unnamed colours are random; objects never touch (a gap of at least
two pixels), and positional prompts are drawn with a clear margin along their axis.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageDraw

from .prompts import COLORS, Prompt
from .scene import SceneObject, relation_holds

# Saturated colours about 50 degrees of hue apart, so blur and noise cannot swap them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 185, 200),
    "blue": (40, 70, 225),
    "purple": (150, 50, 200),
}
assert tuple(PALETTE) == COLORS
BACKGROUND = (250, 250, 250)
GAP = 2  # pixels between object boxes
# Positional prompts are rendered with a margin well above the verifier's RELATION_MARGIN.
RENDER_RELATION_MARGIN = 0.2


def size_range(n_objects: int, resolution: int) -> tuple[int, int]:
    """Object side lengths in pixels: smaller when three or four objects must fit."""
    lo, hi = (0.25, 0.31) if n_objects >= 3 else (0.28, 0.4)
    return max(8, round(lo * resolution)), max(9, round(hi * resolution))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int, fill) -> None:
    """Draw one axis-aligned shape filling the box [x0, x0 + side) x [y0, y0 + side)."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _boxes_apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return ax + asz + GAP <= bx or bx + bsz + GAP <= ax or ay + asz + GAP <= by or by + bsz + GAP <= ay


def _place(prompt: Prompt, resolution: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """Random non-touching boxes (x0, y0, side), one per object, satisfying the relation."""
    lo, hi = size_range(len(prompt.objects), resolution)
    for _ in range(1000):
        boxes: list[tuple[int, int, int]] = []
        for _ in prompt.objects:
            for _ in range(100):
                side = rng.randint(lo, hi)
                box = (rng.randint(1, resolution - 1 - side), rng.randint(1, resolution - 1 - side), side)
                if all(_boxes_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
        if len(boxes) == len(prompt.objects) and _relation_clear(prompt, boxes, resolution):
            return boxes
    raise RuntimeError(f"could not place the objects of {prompt.text!r} at {resolution}px")


def _relation_clear(prompt: Prompt, boxes: list[tuple[int, int, int]], resolution: int) -> bool:
    if prompt.relation is None:
        return True
    (ax, ay, asz), (bx, by, bsz) = boxes[0], boxes[1]
    dx, dy = (ax + asz / 2) - (bx + bsz / 2), (ay + asz / 2) - (by + bsz / 2)
    along, across = (dx, dy) if prompt.relation in ("left of", "right of") else (dy, dx)
    if abs(along) < RENDER_RELATION_MARGIN * resolution or abs(across) >= abs(along):
        return False
    a = SceneObject(None, None, ax + asz / 2, ay + asz / 2)
    b = SceneObject(None, None, bx + bsz / 2, by + bsz / 2)
    return relation_holds(a, b, prompt.relation, resolution)


def render(prompt: Prompt, resolution: int = 32, seed: int | random.Random = 0) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one scene for `prompt`: a uint8 array [H, W, 3] and its objects (true centroids)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    boxes = _place(prompt, resolution, rng)
    image = Image.new("RGB", (resolution, resolution), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects = []
    for spec, (x0, y0, side) in zip(prompt.objects, boxes):
        color = spec.color or rng.choice(COLORS)
        draw_shape(draw, spec.shape, x0, y0, side, PALETTE[color])
        mask = Image.new("L", (resolution, resolution), 0)
        draw_shape(ImageDraw.Draw(mask), spec.shape, x0, y0, side, 255)
        ys, xs = np.nonzero(np.asarray(mask))
        objects.append(SceneObject(spec.shape, color, float(xs.mean()), float(ys.mean()), float(len(xs))))
    return np.asarray(image), objects


def render_batch(
    prompts: list[Prompt], resolution: int = 32, seed: int = 0
) -> tuple[torch.Tensor, list[list[SceneObject]]]:
    """Render a batch: float images in [0, 1] of shape [B, 3, H, W] and their scenes."""
    rng = random.Random(seed)
    arrays, scenes = [], []
    for prompt in prompts:
        array, objects = render(prompt, resolution, rng)
        arrays.append(array)
        scenes.append(objects)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return images, scenes
