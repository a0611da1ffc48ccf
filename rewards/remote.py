"""A reward served by `serve-reward` (rewards.serve), used like a local one: `load("remote:http://host:port")`.

`RemoteReward(url, ...)` asks the server's /info what it serves and returns a RemotePointwise
(with `score`) or a RemotePairwise (with `compare`), so `is_pairwise` sees the right kind. A
batch is sent `batch_size` images per request, `concurrency` requests at a time, each POST
retried on connection errors, timeouts, 429 and 5xx (rewards.http). The wire format is in
rewards.wire, shared with the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import requests
import torch

from .base import INVALID_POLICIES, check_images, check_scores
from .http import (
    RewardServiceError,
    check_url,
    map_in_threads,
    pooled_session,
    post_with_retries,
    request_headers,
    warn_token_in_clear,
)
from .wire import ENDPOINTS, TOKEN_ENV, WIRE_DTYPES, BadResponse, decode_scores, encode_batch


class _RemoteBase:
    """What both kinds share: the connection, the /info answer and the batched POSTs."""

    kind = ""

    def __init__(
        self,
        url: str,
        info: dict,
        session: requests.Session,
        headers: dict,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        deadline: float,
        batch_size: int,
        concurrency: int,
        wire_dtype: str,
        on_invalid: str,
    ) -> None:
        self.url = url
        self.name = f"remote:{url}"
        self.served_name = str(info.get("name", "?"))
        self.session = session
        self.headers = headers
        self.timeout, self.retries, self.backoff, self.deadline = timeout, retries, backoff, deadline
        self.batch_size = min(batch_size, int(info.get("max_batch") or batch_size))  # never more than the server takes
        self.max_request_bytes = int(info.get("max_request_bytes") or 0) or None
        self.concurrency = concurrency
        self.wire_dtype = wire_dtype
        self.on_invalid = on_invalid

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, serving {self.served_name!r})"

    def _post(self, images: Sequence[torch.Tensor], prompts: Sequence[str]) -> list[float]:
        """One request: the scores of one chunk (None from the server becomes NaN)."""
        body = encode_batch(images, prompts, self.kind, self.wire_dtype)
        if self.max_request_bytes is not None and len(body) > self.max_request_bytes:
            raise RewardServiceError(
                f"{self.name}: a request of {len(prompts)} images is {len(body)} bytes, over the limit of "
                f"{self.max_request_bytes} bytes of {self.url}; lower batch_size (now {self.batch_size}) or start the "
                f"server with a larger --max-request-mb"
            )
        response = post_with_retries(
            self.session,
            self.url + ENDPOINTS[self.kind],
            what=self.name,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            headers=self.headers,
            data=body,
            deadline=self.deadline,
        )
        try:
            return decode_scores(response.text, len(prompts))
        except BadResponse as error:
            raise RewardServiceError(f"{self.name}: {error}") from None

    def _run(self, images: Sequence[torch.Tensor], prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B] scores of a whole batch, batch_size images per request, checked."""
        prompts = list(prompts)
        for image in images:
            check_images(image, prompts, self.name)
        count = len(prompts)
        starts = range(0, count, self.batch_size)
        chunks = map_in_threads(
            lambda s: self._post(
                [image[s : s + self.batch_size] for image in images], prompts[s : s + self.batch_size]
            ),
            starts,
            self.concurrency,
        )
        values = torch.tensor([value for chunk in chunks for value in chunk], dtype=torch.float32)
        if self.on_invalid == "error":
            check_scores(values, count, self.name, "error")  # NaN/inf fail here, naming the samples
        return values  # with on_invalid="drop", NaN stays NaN for the caller's own drop policy


class RemotePointwise(_RemoteBase):
    """A served pointwise reward: `score(images, prompts) -> Tensor[B]`."""

    kind = "pointwise"

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B] scores from the server."""
        return self._run([images], prompts)


class RemotePairwise(_RemoteBase):
    """A served pairwise reward: `compare(images_a, images_b, prompts) -> Tensor[B]`."""

    kind = "pairwise"

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B] probabilities that images_a is preferred, from the server."""
        if images_a.shape != images_b.shape:
            raise ValueError(
                f"{self.name}: images_a {tuple(images_a.shape)} and images_b {tuple(images_b.shape)} must have the same shape"
            )
        return self._run([images_a, images_b], prompts)


KINDS = {"pointwise": RemotePointwise, "pairwise": RemotePairwise}


def RemoteReward(
    url: str,
    token_env: str | None = TOKEN_ENV,
    timeout: float = 60.0,
    retries: int = 6,  # 0.5 + 1 + ... + 16 s of waits: a server restart (10-15 s) does not stop training
    backoff: float = 0.5,
    deadline: float = 300.0,
    batch_size: int = 16,
    concurrency: int = 4,
    wire_dtype: str = "float16",
    on_invalid: str = "error",
) -> RemotePointwise | RemotePairwise:
    """The reward served at `url` (http://host:port), pointwise or pairwise as its /info says.

    The bearer token is read from the environment variable `token_env` when set. `wire_dtype`
    is how pixels travel (float16 halves the bytes; the server upcasts to float32; the name
    is not `dtype`, which registry.load keeps for itself). `on_invalid`:
    "error" fails on NaN/inf scores naming the samples; "drop" returns them as NaN so the
    caller's reward_invalid=drop can leave them out."""
    url = check_url(url, "remote reward URL", "http://127.0.0.1:8731 (as printed by serve-reward)")
    _check_options(timeout, retries, backoff, batch_size, concurrency, wire_dtype, on_invalid)
    headers = warn_token_in_clear(url, request_headers("application/octet-stream", token_env))
    session = pooled_session(concurrency)
    response = post_with_retries(
        session,
        url + "/info",
        what=f"remote:{url}",
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        headers=headers,
        data=b"",
        deadline=deadline,
    )
    info = _info_from(response, url)
    return KINDS[info["kind"]](
        url,
        info,
        session,
        headers,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        deadline=deadline,
        batch_size=batch_size,
        concurrency=concurrency,
        wire_dtype=wire_dtype,
        on_invalid=on_invalid,
    )


def _check_options(
    timeout: float, retries: int, backoff: float, batch_size: int, concurrency: int, wire_dtype: str, on_invalid: str
) -> None:
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"remote reward wire_dtype must be one of {sorted(WIRE_DTYPES)}, got {wire_dtype!r}")
    if on_invalid not in INVALID_POLICIES:
        raise ValueError(f"remote reward on_invalid must be one of {INVALID_POLICIES}, got {on_invalid!r}")
    for key, value, low in (("retries", retries, 0), ("batch_size", batch_size, 1), ("concurrency", concurrency, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"remote reward {key} must be an integer >= {low}, got {value!r}")
    for key, value, positive in (("timeout", timeout, True), ("backoff", backoff, False)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise ValueError(
                f"remote reward {key} must be a {'positive' if positive else 'non-negative'} number of seconds, got {value!r}"
            )


def _info_from(response: requests.Response, url: str) -> dict:
    """The /info answer, checked: a JSON object with a name and a kind."""
    try:
        info = response.json()
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        raise RewardServiceError(
            f"remote:{url}: {url}/info did not answer like serve-reward (expected JSON with kind pointwise or pairwise), "
            f"got {response.text[:200]!r}"
        )
    return info
