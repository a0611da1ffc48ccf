"""Shared pieces of the CLIP-family rewards (HPS, CLIP score, aesthetic, PickScore).

Tensor preprocessing that reproduces the eval transforms of open_clip and of transformers'
CLIP image processor on float [B, 3, H, W] batches in [0, 1], batched and on the model's device;
loading an open_clip model by architecture name with a pretrained tag or a local checkpoint; and
small helpers for devices, dtypes, checkpoint files and batching. Heavy libraries (open_clip,
huggingface_hub) are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

RESIZE_MODES = ("shortest", "longest", "squash")
CROP_ROUNDINGS = ("round", "floor")
INTERPOLATIONS = ("bicubic", "bilinear")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, open_clip's default
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes used by transformers image processors
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class ImageTransform:
    """The pixels a CLIP-style model expects: geometry, interpolation and normalisation.

    resize_mode "shortest" resizes the short side to `resize_to` (default: the crop size) and
    centre-crops to `size` (open_clip and CLIP eval); "longest" fits the long side to `size` and
    zero-pads the rest (HPSv2's eval transform); "squash" resizes straight to `size`.
    """

    size: tuple[int, int]  # (height, width) the model reads
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"
    resize_to: int | None = None  # shortest-edge target of "shortest"; None: min(size)
    interpolation: str = "bicubic"
    # torchvision's CenterCrop rounds the crop offset; transformers' CLIP processor floors it.
    crop_rounding: str = "round"
    # Resizing 8-bit images (PIL, uint8 tensors) clips the bicubic overshoot to [0, 1];
    # HPSv2 resizes a float tensor and keeps it.
    clamp: bool = True

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"ImageTransform size must be (height, width) of positive ints, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"ImageTransform needs 3 means and 3 positive stds, got mean={self.mean!r} std={self.std!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}, got {self.crop_rounding!r}")
        if self.resize_mode == "longest" and self.size[0] != self.size[1]:
            raise ValueError(f"resize_mode 'longest' needs a square size, got {self.size!r}")
        if self.resize_to is not None and self.resize_to < min(self.size):
            raise ValueError(f"resize_to={self.resize_to} is smaller than the crop {self.size!r}")


def _resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize [B, C, H, W] to size with antialiasing (what torchvision does for tensors and what
    PIL does always); a no-op when the size already matches."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode=interpolation, align_corners=False, antialias=True)


def shortest_edge_size(height: int, width: int, target: int) -> tuple[int, int]:
    """(height, width) with the short side at `target`, the long side truncated as torchvision's
    Resize(int) and transformers' shortest_edge resize both do."""
    if height <= width:
        return target, int(target * width / height)
    return int(target * height / width), target


def center_crop(images: torch.Tensor, size: tuple[int, int], rounding: str = "round") -> torch.Tensor:
    """The central `size` window of [B, C, H, W]; the offset is rounded (torchvision) or floored
    (transformers), which differ by one pixel when the margin is odd."""
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        raise ValueError(f"cannot crop {size!r} from images of size {(height, width)!r}")
    if rounding == "round":
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    elif rounding == "floor":
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    else:
        raise ValueError(f"rounding must be one of {CROP_ROUNDINGS}, got {rounding!r}")
    return images[..., top : top + crop_h, left : left + crop_w]


def _fit_longest_and_pad(images: torch.Tensor, side: int, interpolation: str, clamp: bool) -> torch.Tensor:
    """HPSv2's eval geometry: scale the long side to `side` (rounding the short one), then pad
    with zeros (black, before normalisation) split evenly, the extra pixel going right/bottom."""
    height, width = images.shape[-2:]
    scale = side / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    images = _resize(images, (new_h, new_w), interpolation)
    if clamp:
        images = images.clamp(0, 1)
    pad_h, pad_w = side - new_h, side - new_w
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def preprocess(
    images: torch.Tensor,
    transform: ImageTransform,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Model input [B, 3, h, w] from images [B, 3, H, W] in [0, 1]: resize, crop or pad and
    normalise as `transform` says, on `device`, returned in `dtype` (default float32)."""
    # Resize and normalise in float32 whatever the model dtype: bf16 bicubic loses ~1/128 per pixel.
    x = images.to(device=device if device is not None else images.device, dtype=torch.float32)
    if transform.resize_mode == "shortest":
        target = transform.resize_to or min(transform.size)
        x = _resize(x, shortest_edge_size(x.shape[-2], x.shape[-1], target), transform.interpolation)
        x = center_crop(x, transform.size, transform.crop_rounding)
    elif transform.resize_mode == "longest":
        x = _fit_longest_and_pad(x, transform.size[0], transform.interpolation, transform.clamp)
    else:
        x = _resize(x, transform.size, transform.interpolation)
    if transform.clamp:
        x = x.clamp(0, 1)
    mean = torch.tensor(transform.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype or torch.float32)


def transform_from_open_clip(
    model: torch.nn.Module, resize_mode: str | None = None, clamp: bool = True
) -> ImageTransform:
    """The eval transform open_clip attaches to a model (`model.visual.preprocess_cfg`)."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = cfg.get("interpolation", "bicubic")
    interpolation = "bicubic" if interpolation == "random" else interpolation  # open_clip's eval rule
    return ImageTransform(
        size=size,
        mean=tuple(_three(cfg.get("mean", OPENAI_MEAN))),
        std=tuple(_three(cfg.get("std", OPENAI_STD))),
        resize_mode=resize_mode or cfg.get("resize_mode", "shortest"),
        interpolation=interpolation,
        crop_rounding="round",
        clamp=clamp,
    )


def transform_from_hf_processor(image_processor: Any) -> ImageTransform:
    """The transform of a transformers CLIP image processor: shortest-edge resize, centre crop
    (floored offset), rescale 1/255, normalise."""
    size = _as_dict(image_processor.size)
    crop = _as_dict(image_processor.crop_size) if getattr(image_processor, "do_center_crop", True) else {}
    resample = getattr(image_processor, "resample", 3)
    interpolation = _PIL_RESAMPLE.get(int(resample))
    if interpolation is None:
        raise ValueError(
            f"image processor resample={resample!r} is not supported; expected one of {sorted(_PIL_RESAMPLE)} (bilinear, bicubic)"
        )
    if not getattr(image_processor, "do_resize", True) or not getattr(image_processor, "do_normalize", True):
        raise ValueError("image processor with do_resize=False or do_normalize=False is not supported")
    common = dict(
        mean=tuple(_three(image_processor.image_mean)),
        std=tuple(_three(image_processor.image_std)),
        interpolation=interpolation,
        crop_rounding="floor",
    )
    if size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        crop_size = (int(crop["height"]), int(crop["width"])) if crop else (edge, edge)
        return ImageTransform(size=crop_size, resize_mode="shortest", resize_to=edge, **common)
    if size.get("height") and size.get("width") and not crop:
        return ImageTransform(size=(int(size["height"]), int(size["width"])), resize_mode="squash", **common)
    raise ValueError(
        f"image processor size={size!r}, crop_size={crop!r} is not supported; expected a shortest_edge resize (CLIP)"
    )


def _three(values: Any) -> list[float]:
    values = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values, got {values!r}")
    return values


def _as_dict(size: Any) -> dict:
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    if isinstance(size, int):
        return {"shortest_edge": size}
    return {k: v for k, v in vars(size).items() if v is not None}  # transformers' SizeDict


def resolve_device(device: torch.device | str | None) -> torch.device:
    """torch.device for `device`; None means the CPU."""
    return torch.device("cpu") if device is None else torch.device(device)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """torch floating dtype for `dtype` (a torch.dtype or a name such as "bf16"); None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"reward dtype must be a floating dtype, got {dtype}")
        return dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch.dtype or one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def check_batch_size(batch_size: int) -> int:
    """`batch_size` as a positive int, or a ValueError naming it."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` covering range(count)."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def looks_like_path(value: str) -> bool:
    """True for a string meant as a local file or folder rather than a hub id or tag."""
    if os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") > 1:
        return True
    return value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def local_file(path: str | os.PathLike, what: str) -> str:
    """`path` with ~ expanded, which must be a file (named in the error when it is not)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what} checkpoint not found: {path!r} (expected a file; leave it unset to download the published one)"
        )
    return path


def checkpoint_file(path: str | os.PathLike | None, repo_id: str, filename: str, what: str) -> str:
    """A local checkpoint file: `path` when given (it must exist), else `filename` from the hub
    repo `repo_id` through huggingface_hub (cached; fails offline when not cached)."""
    if path is not None:
        return local_file(path, what)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as error:  # offline, no cache, gated, ...: say what was wanted
        raise RuntimeError(
            f"could not get the {what} checkpoint {filename!r} from the hub repo {repo_id!r} ({type(error).__name__}: {error}); download it and pass its local path instead"
        ) from error


def verified_download(url: str, filename: str, sha256: str, what: str) -> str:
    """`url` saved once under torch's hub cache (flowrl/filename) and kept only when its sha256 is
    `sha256`; a cached copy is checked again before use. Fails naming the file when it cannot
    be fetched or its content differs."""
    import hashlib
    from pathlib import Path

    target = Path(torch.hub.get_dir()) / "flowrl" / filename
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=sha256, progress=True)
    except RuntimeError as error:  # torch names both hashes and removes the partial file
        raise RuntimeError(
            f"the {what} downloaded from {url} is not the published file ({error}); nothing was kept"
        ) from None
    except OSError as error:  # offline, DNS, proxies
        raise RuntimeError(
            f"could not download the {what} from {url} ({type(error).__name__}: {error}); download it where there "
            "is a network and pass its local path instead"
        ) from None
    return str(target)


def quick_gelu_for(architecture: str, pretrained: str | None) -> bool:
    """Whether open_clip weights `pretrained` for `architecture` were trained with QuickGELU.

    open_clip >= 2.24 builds `ViT-L-14` with nn.GELU even for the `openai` tag (it only warns),
    which silently changes every OpenAI CLIP feature; the tag's config says which it needs. Local
    files cannot say: False, unless the architecture name ends in `-quickgelu`."""
    import open_clip

    if architecture.endswith("-quickgelu"):
        return True
    if not pretrained:
        return False
    return bool(open_clip.get_pretrained_cfg(architecture, pretrained).get("quick_gelu", False))


class OpenClipModel(NamedTuple):
    """An open_clip model ready to score: eval mode, no grads, on its device and dtype."""

    model: torch.nn.Module
    tokenizer: Any  # prompts -> LongTensor [B, context_length]
    transform: ImageTransform
    device: torch.device
    dtype: torch.dtype


def load_open_clip(
    architecture: str,
    pretrained: str | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    quick_gelu: bool | None = None,
    resize_mode: str | None = None,
    clamp: bool = True,
) -> OpenClipModel:
    """An open_clip model of `architecture` with weights from `pretrained`: an open_clip tag
    (downloaded by open_clip), a local checkpoint file (an open_clip state dict, optionally
    wrapped as {"state_dict": ...} as training checkpoints and HPS are), or None (random).

    quick_gelu=None takes the activation from the tag's config (see quick_gelu_for)."""
    import open_clip

    if open_clip.get_model_config(architecture) is None:
        raise ValueError(
            f"unknown open_clip architecture {architecture!r}; see open_clip.list_models() for the {len(open_clip.list_models())} known ones"
        )
    if pretrained is not None:
        pretrained = os.path.expanduser(os.fspath(pretrained))
        is_tag = bool(open_clip.get_pretrained_cfg(architecture, pretrained))
        if not is_tag and not os.path.isfile(pretrained):
            if looks_like_path(pretrained):
                raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained!r} (expected a file)")
            tags = open_clip.list_pretrained_tags_by_model(architecture)
            raise ValueError(
                f"{pretrained!r} is neither a pretrained tag of {architecture!r} (known: {tags}) nor an existing file"
            )
    if quick_gelu is None:
        quick_gelu = quick_gelu_for(architecture, pretrained)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    model = open_clip.create_model(architecture, pretrained=pretrained, device="cpu", force_quick_gelu=quick_gelu)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(architecture)
    transform = transform_from_open_clip(model, resize_mode=resize_mode, clamp=clamp)
    return OpenClipModel(model, tokenizer, transform, device, dtype)


def normalized_features(
    clip: OpenClipModel, images: torch.Tensor, prompts: list[str] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised float32 (image features [B, D], text features [B, D] or None) of an open_clip
    model; normalising in float32 keeps bf16 models from losing the last digits of a cosine."""
    pixels = preprocess(images, clip.transform, clip.device, clip.dtype)
    image = F.normalize(clip.model.encode_image(pixels).float(), dim=-1)
    if prompts is None:
        return image, None
    tokens = clip.tokenizer(list(prompts)).to(clip.device)
    text = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)
    return image, text


def empty_scores() -> torch.Tensor:
    """The scores of an empty batch."""
    return torch.zeros(0, dtype=torch.float32)


def score_in_batches(
    score_batch: Callable[[torch.Tensor, list[str]], torch.Tensor],
    images: torch.Tensor,
    prompts: Sequence[str],
    batch_size: int,
) -> torch.Tensor:
    """score_batch(images, prompts) over `batch_size` images at a time, without gradients:
    float32 [B] on the CPU (empty for an empty batch)."""
    if images.shape[0] == 0:
        return empty_scores()
    with torch.no_grad():
        parts = [score_batch(images[part], list(prompts[part])) for part in batches(images.shape[0], batch_size)]
    return torch.cat(parts).float().cpu()
