"""The wire format of served rewards, shared by the server (rewards.serve) and the client
(rewards.remote), which import it and not each other.

Endpoints: `GET /info` -> {"name", "kind": "pointwise" | "pairwise", "max_request_bytes",
"max_batch"} (POST /info answers the same, so clients need only one retrying verb);
`POST /score` for a pointwise reward, `POST /compare` for a pairwise one.

The request body is a safetensors blob (exact floats, no pickle, safe to parse) holding `images`
(or `images_a` and `images_b`) as float16 or float32 [B, 3, H, W] tensors in [0, 1]; the prompts
are a JSON list under the key "prompts" of the safetensors metadata. The response is JSON
{"scores": [B floats]}, with null for a NaN or infinite score. Clients never send file paths or
URLs, only pixels and prompts. With a token, every request carries `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

TOKEN_ENV = "FLOWRL_REWARD_TOKEN"  # the environment variable both sides read the token from by default
WIRE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
IMAGE_KEYS = {"pointwise": ("images",), "pairwise": ("images_a", "images_b")}
ENDPOINTS = {"pointwise": "/score", "pairwise": "/compare"}


class BadRequest(ValueError):
    """A request body that is not a valid batch; the message goes back to the client (HTTP 400)."""


class BatchTooLarge(BadRequest):
    """More images in one request than the server's max_batch (HTTP 413)."""


class BadResponse(ValueError):
    """A response body that is not {"scores": [...]} with one number (or null) per image."""


# ---------------------------------------------------------------------------------------------
# Requests


def encode_batch(images: Sequence[torch.Tensor], prompts: Sequence[str], kind: str, dtype: str = "float32") -> bytes:
    """A request body: the image tensors of `kind` as `dtype`, the prompts in the metadata."""
    import safetensors.torch

    if dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype must be one of {sorted(WIRE_DTYPES)}, got {dtype!r}")
    tensors = {
        key: image.detach().to("cpu", WIRE_DTYPES[dtype]).contiguous() for key, image in zip(IMAGE_KEYS[kind], images)
    }
    return safetensors.torch.save(tensors, metadata={"prompts": json.dumps(list(prompts))})


def _metadata(body: bytes) -> dict:
    """The `__metadata__` of a safetensors blob (its header is an 8-byte length then JSON)."""
    length = int.from_bytes(body[:8], "little")
    header = json.loads(body[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("the safetensors metadata is not a JSON object")
    return metadata


MAX_SIDE = 4096  # pixels a side of a served image, checked before any resize
MAX_ASPECT = 16.0
RETRYABLE_HEADER = "X-Flowrl-Retryable"  # "false" on an error the same request would meet again


def decode_batch(body: bytes, kind: str, max_batch: int) -> tuple[list[torch.Tensor], list[str]]:
    """(float32 image tensors, prompts) from a request body, or BadRequest saying what is wrong."""
    import safetensors.torch

    try:
        tensors = safetensors.torch.load(body)
        metadata = _metadata(body)
    except BadRequest:
        raise
    except Exception as error:  # the parser's errors have no common base class
        raise BadRequest(f"the body is not a safetensors blob ({type(error).__name__}: {str(error)[:200]})") from None
    expected = IMAGE_KEYS[kind]
    if sorted(tensors) != sorted(expected):
        raise BadRequest(f"expected the tensors {list(expected)} for a {kind} reward, got {sorted(tensors)}")
    prompts = _prompts(metadata)
    images = [_image_batch(key, tensors[key], len(prompts), max_batch) for key in expected]
    if len({tuple(image.shape) for image in images}) > 1:
        raise BadRequest(f"images_a and images_b differ in shape: {[tuple(image.shape) for image in images]}")
    return images, prompts


def _prompts(metadata: dict) -> list[str]:
    if "prompts" not in metadata:
        raise BadRequest('the safetensors metadata has no "prompts" (a JSON list of strings)')
    try:
        prompts = json.loads(metadata["prompts"])
    except (TypeError, ValueError):
        raise BadRequest('the metadata "prompts" is not JSON; expected a JSON list of strings') from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(f'the metadata "prompts" must be a JSON list of strings, got {type(prompts).__name__}')
    return prompts


def _image_batch(key: str, images: torch.Tensor, count: int, max_batch: int) -> torch.Tensor:
    """A float32 [B, 3, H, W] batch in [0, 1] with one prompt per image, or BadRequest."""
    if images.dtype not in WIRE_DTYPES.values():
        raise BadRequest(f"{key} has dtype {images.dtype}; expected float16 or float32")
    if images.ndim != 4 or images.shape[1] != 3:
        raise BadRequest(f"{key} has shape {tuple(images.shape)}; expected [B, 3, H, W]")
    height, width = int(images.shape[2]), int(images.shape[3])
    if height < 1 or width < 1:
        raise BadRequest(f"{key} has shape {tuple(images.shape)}: an image needs at least one pixel a side")
    if max(height, width) > MAX_SIDE or max(height, width) / min(height, width) > MAX_ASPECT:
        raise BadRequest(
            f"{key} images are {height} x {width}; this server takes at most {MAX_SIDE} pixels a side "
            f"and an aspect ratio of at most {MAX_ASPECT:g}:1"
        )
    if images.shape[0] > max_batch:
        raise BatchTooLarge(f"{key} holds {images.shape[0]} images; this server takes at most {max_batch} per request")
    images = images.float()  # rewards get float32 whatever the wire dtype; float16 -> float32 is exact
    if not bool(torch.isfinite(images).all()):
        raise BadRequest(f"{key} holds NaN or inf pixels; expected values in [0, 1]")
    if images.shape[0] != count:
        raise BadRequest(
            f"{key} holds {images.shape[0]} images but the metadata has {count} prompts; expected one prompt per image"
        )
    if images.numel() and (
        float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3
    ):  # the tolerance of base.check_images
        raise BadRequest(f"{key} has values in [{float(images.min()):.3g}, {float(images.max()):.3g}]; expected [0, 1]")
    return images


# ---------------------------------------------------------------------------------------------
# Responses


def encode_scores(scores: torch.Tensor, valid: torch.Tensor) -> bytes:
    """The response body: {"scores": [...]} with null where a score is NaN or inf."""
    values = [float(s) if ok else None for s, ok in zip(scores.tolist(), valid.tolist())]
    return json.dumps({"scores": values}).encode()


def decode_scores(text: str, count: int) -> list[float]:
    """The `count` scores of a {"scores": [...]} response body, null read as NaN, or BadResponse."""
    try:
        scores = json.loads(text)["scores"]
    except (ValueError, KeyError, TypeError):
        raise BadResponse(f'expected a JSON response {{"scores": [...]}}, got {text[:200]!r}') from None
    if not isinstance(scores, list) or len(scores) != count:
        got = f"{len(scores)} scores" if isinstance(scores, list) else type(scores).__name__
        raise BadResponse(f"sent {count} images and got {got} back; expected {count} scores")
    if not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in scores):
        raise BadResponse(f"expected numbers or null as scores, got {scores[:5]!r}")
    return [float("nan") if s is None else float(s) for s in scores]
