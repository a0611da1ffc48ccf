"""The exact ToyShapes verifier: from pixels alone, find the objects and judge them against a prompt.

Pipeline per image: saturated pixels are foreground; each takes the palette colour of nearest
hue; connected components of one colour are objects; an object's shape is the template
(circle, square, triangle) its box-normalised mask overlaps best. `scene.assess` then applies
the same rule that defines the ground truth.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from .prompts import COLORS, SHAPES, Prompt, parse_prompt
from .render import PALETTE, draw_shape
from .scene import Assessment, SceneObject, assess

MIN_SATURATION = 0.35  # white background and its noise stay below; blurred edges above half-way
MIN_VALUE = 0.25
MIN_AREA_FRACTION = 0.016  # smaller components are specks, not objects (16 px at 32x32; the
# smallest drawn object, an 8 px triangle, covers about 28)
MAX_ASPECT = 1.6  # every shape has a square box; longer components are merged or broken objects
MIN_SHAPE_IOU = 0.6  # below this a component matches no shape template
TEMPLATE_SIZE = 16


def _hue_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an [H, W, 3] float image."""
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return (60 * hue) % 360, saturation, high


@lru_cache(maxsize=1)
def _palette_hues() -> np.ndarray:
    rgb = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)[None] / 255.0
    return _hue_saturation_value(rgb)[0][0]


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    """Each shape drawn large then reduced to a TEMPLATE_SIZE mask filling its box."""
    big = 8 * TEMPLATE_SIZE
    out = {}
    for shape in SHAPES:
        canvas = Image.new("L", (big, big), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, 0, 0, big, 255)
        small = canvas.resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.BOX)
        out[shape] = np.asarray(small) >= 128
    return out


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """The shape of a component mask (cropped to its box) and its template IoU; None if no fit."""
    h, w = mask.shape
    if max(h, w) / min(h, w) > MAX_ASPECT:
        return None, 0.0
    resized = (
        torch.nn.functional.interpolate(
            torch.from_numpy(mask.astype(np.float32))[None, None],
            size=(TEMPLATE_SIZE, TEMPLATE_SIZE),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        >= 0.5
    )
    best, best_iou = None, 0.0
    for shape, template in _templates().items():
        iou = (resized & template).sum() / max(1, (resized | template).sum())
        if iou > best_iou:
            best, best_iou = shape, float(iou)
    return (best, best_iou) if best_iou >= MIN_SHAPE_IOU else (None, best_iou)


def _as_float_rgb(image) -> np.ndarray:
    """Accept [3, H, W] tensors in [0, 1] or [H, W, 3] uint8/float arrays; return [H, W, 3] floats."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape [3, H, W], got {tuple(image.shape)}")
        return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an image array of shape [H, W, 3], got {array.shape}")
    return array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else np.clip(array, 0, 1)


def detect_objects(image) -> list[SceneObject]:
    """Every object in an image: one per sizeable connected component of one palette colour."""
    rgb = _as_float_rgb(image)
    height, width, _ = rgb.shape
    hue, saturation, value = _hue_saturation_value(rgb)
    foreground = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
    distance = np.abs(hue[..., None] - _palette_hues())  # [H, W, colours]
    distance = np.minimum(distance, 360 - distance)
    nearest = distance.argmin(-1)
    min_area = MIN_AREA_FRACTION * height * width
    objects = []
    for index, color in enumerate(COLORS):
        labels, count = ndimage.label(foreground & (nearest == index))
        for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
            component = ndimage.binary_fill_holes(labels[box] == box_index)
            area = int(component.sum())
            if area < min_area:
                continue
            shape, _ = classify_shape(component)
            ys, xs = np.nonzero(component)
            objects.append(
                SceneObject(shape, color, float(xs.mean() + box[1].start), float(ys.mean() + box[0].start), float(area))
            )
    return objects


def verify_image(image, prompt: str | Prompt) -> tuple[Assessment, list[SceneObject]]:
    """Judge one image against one prompt; also return the objects found."""
    prompt = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    objects = detect_objects(image)
    size = _as_float_rgb(image).shape[0]
    return assess(objects, prompt, size), objects


def verify_with_objects(images, prompts: list[str | Prompt]) -> list[tuple[Assessment, list[SceneObject]]]:
    """Judge a batch: images [B, 3, H, W] in [0, 1] (or a list of images) against B prompts;
    each verdict with the objects found."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    return [verify_image(image, prompt) for image, prompt in zip(images, prompts)]


def verify(images, prompts: list[str | Prompt]) -> list[Assessment]:
    """Judge a batch: images [B, 3, H, W] in [0, 1] (or a list of images) against B prompts."""
    return [assessment for assessment, _ in verify_with_objects(images, prompts)]


def scores(images, prompts: list[str | Prompt]) -> torch.Tensor:
    """Dense rewards in [0, 1], shape [B]: 1 exactly when an image satisfies its prompt."""
    return torch.tensor([a.score for a in verify(images, prompts)], dtype=torch.float32)
