"""HTTP calls shared by the rewards served elsewhere (remote rewards, VLM judges): one POST with
a timeout and retries with exponential backoff, and a thread pool that keeps results in order."""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import requests

from .wire import RETRYABLE_HEADER

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class RewardServiceError(RuntimeError):
    """A served reward or judge could not be reached, or refused the request."""


def post_with_retries(
    session: requests.Session,
    url: str,
    *,
    what: str,
    timeout: float,
    retries: int,
    backoff: float,
    headers: dict | None = None,
    json: object = None,
    data: bytes | None = None,
    deadline: float | None = None,
) -> requests.Response:
    """POST and return the 2xx response. Connection errors, timeouts, 429 and 5xx are retried
    `retries` times, waiting backoff * 2^k (with jitter, or the server's Retry-After) between
    tries, within `deadline` seconds in all; other 4xx, and a 5xx the server marks as not
    retryable (the same request would fail again), fail at once with the server's message.
    `what` names the reward in errors."""
    last = "no attempt"
    end = None if deadline is None else time.monotonic() + deadline
    wait = 0.0
    for attempt in range(retries + 1):
        if attempt:
            pause = wait or min(backoff * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
            if end is not None and time.monotonic() + pause > end:
                last += f" (stopped: the {deadline:g} s deadline)"
                break
            time.sleep(pause)
        wait = 0.0
        try:
            response = session.post(url, json=json, data=data, headers=headers, timeout=timeout)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as error:  # a reply cut off mid-body too
            last = connection_problem(error, timeout)
            continue
        final = response.headers.get(RETRYABLE_HEADER, "").lower() == "false"
        if response.status_code in RETRY_STATUS and not final:
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            wait = retry_after(response)
            continue
        if not response.ok:
            raise RewardServiceError(
                f"{what}: {url} refused the request with HTTP {response.status_code}: {response.text[:500]}"
            )
        return response
    raise RewardServiceError(f"{what}: {url} failed after {retries + 1} attempts; last error: {last}")


def connection_problem(error: Exception, timeout: float) -> str:
    """A failed connection in words: nothing listening, a host name that does not resolve, or no
    answer in time; otherwise the error itself."""
    text = str(error)
    if "Connection refused" in text:
        return "nothing is listening there (connection refused)"
    if any(sign in text for sign in ("Name or service not known", "nodename nor servname", "getaddrinfo failed")):
        return "the host name does not resolve"
    if isinstance(error, requests.Timeout):
        return f"no answer within the {timeout:g} s timeout"
    return f"{type(error).__name__}: {error}"


def retry_after(response: requests.Response) -> float:
    """The server's Retry-After in seconds (capped at 60), or 0 when it sends none we can read."""
    try:
        return min(max(float(response.headers.get("Retry-After", "")), 0.0), 60.0)
    except ValueError:
        return 0.0


PLAIN_HTTP_TOKEN_ENV = "FLOWRL_ALLOW_PLAIN_HTTP_TOKEN"  # 1: send a token over plain http to another host


def warn_token_in_clear(url: str, headers: dict) -> dict:
    """The headers to send to `url`: a bearer token travels over https or to this machine only;
    over plain http to another host it is left out (with a warning) unless $FLOWRL_ALLOW_PLAIN_HTTP_TOKEN=1."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if "Authorization" not in headers or not url.startswith("http://") or is_loopback_host(host):
        return headers
    if os.environ.get(PLAIN_HTTP_TOKEN_ENV) == "1":
        warnings.warn(
            f"sending a bearer token over plain http to {host} ({PLAIN_HTTP_TOKEN_ENV}=1): anyone on the path can read it",
            stacklevel=3,
        )
        return headers
    warnings.warn(
        f"not sending the API key over plain http to {host}, which is not this machine (anyone on the path could "
        f"read it); use https or an SSH tunnel to a loopback port, or set {PLAIN_HTTP_TOKEN_ENV}=1 to send it anyway",
        stacklevel=3,
    )
    return {k: v for k, v in headers.items() if k != "Authorization"}


def is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def pooled_session(concurrency: int) -> requests.Session:
    """One Session for all worker threads (urllib3's pool is thread-safe; these calls use no
    cookies), with a connection per worker."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(concurrency, 10))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def request_headers(content_type: str, token_env: str | None) -> dict:
    """Content-Type, plus `Authorization: Bearer <token>` when the environment variable
    `token_env` holds one (no header otherwise)."""
    token = os.environ.get(token_env) if token_env else None
    return {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}


def check_url(url: object, what: str, example: str) -> str:
    """`url` without a trailing slash, or a ValueError naming `what` and an example."""
    if (
        not isinstance(url, str)
        or not url.startswith(("http://", "https://"))
        or len(url.rstrip("/")) <= len("https://")
    ):
        raise ValueError(f"{what} {url!r}: expected an http(s) address such as {example}")
    return url.rstrip("/")


def check_client_numbers(
    what: str, integers: dict[str, tuple[object, int]], reals: dict[str, tuple[object, bool]]
) -> None:
    """Client options: integers[name] = (value, lowest allowed), reals[name] = (value, must be
    positive rather than non-negative); the first bad one fails naming `what`, the key and the value."""
    for key, (value, low) in integers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{what} {key} must be an integer >= {low}, got {value!r}")
    for key, (value, positive) in reals.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise ValueError(
                f"{what} {key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}"
            )


def check_chat_server(
    session: requests.Session, base_url: str, model: str, what: str, headers: dict, timeout: float = 20.0
) -> list[str] | None:
    """Before any work: GET {base_url}/models of an OpenAI-compatible API and check that it serves
    `model`. Returns the served names (None when the server lists none); a ValueError names what is
    wrong: nothing listening, a refused key, a root without /v1, or the names it does serve."""
    root = base_url.removesuffix("/chat/completions").rstrip("/")
    try:
        response = session.get(root + "/models", timeout=timeout, headers=headers)
    except requests.RequestException as error:
        raise ValueError(
            f"{what}: nothing answers at {root} ({type(error).__name__}); is the server running?"
        ) from None
    if response.status_code in (401, 403):
        raise ValueError(f"{what}: {root} refused the request ({response.status_code}); check the API key")
    if response.status_code == 404 and not root.endswith("/v1"):
        raise ValueError(f"{what}: {root}/models is not found; an OpenAI-compatible API root ends in /v1: {root}/v1?")
    try:
        served = [entry["id"] for entry in response.json()["data"]] if response.ok else None
    except (ValueError, KeyError, TypeError):
        served = None
    if served and model not in served:
        raise ValueError(f"{what}: {root} serves {served}, not {model!r}; pass one of those as the model")
    return served


def fetch_pinned(url: str, sha256: str, timeout: float = 60.0) -> bytes:
    """The bytes at `url`, which must have the given sha256 (a pinned file of another project)."""
    import hashlib

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as error:
        raise ValueError(f"could not download {url} ({type(error).__name__}: {error})") from None
    digest = hashlib.sha256(response.content).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url} has sha256 {digest}, expected {sha256}: not the pinned file")
    return response.content


def chat_answer_text(response: requests.Response) -> tuple[str, object, str | None]:
    """(the first choice's message text, its finish_reason, None) of an OpenAI-style chat
    completion, or ("", None, what is wrong) for a body that is not one with text."""
    try:
        choice = response.json()["choices"][0]
        content = choice["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return (
            "",
            None,
            f"expected a chat completion (JSON with choices[0].message.content), got {response.text[:200]!r}",
        )
    if isinstance(content, list):  # some servers return content parts
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        return (
            "",
            None,
            f"the answer has no text content (content {content!r}, finish_reason {choice.get('finish_reason')!r})",
        )
    return content, choice.get("finish_reason"), None


def map_in_threads(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """[fn(item) for item in items], `workers` at a time, in order; the first error is raised."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
