"""Serve any registered reward over HTTP, so a trainer can score images on another process or host.

    serve-reward pickscore --port 8731 --device cuda            # python -m flowrl.rewards.serve ... too

Endpoints: `GET /info`, and `POST /score` for a pointwise reward or `POST /compare` for a
pairwise one. The endpoints and the wire format (safetensors pixels and prompts in, JSON scores
out) are in rewards.wire, which the client (rewards.remote) shares.

Security. The server listens on loopback unless told otherwise. With a token (the environment
variable named by --token-env, FLOWRL_REWARD_TOKEN when set) every request must carry
`Authorization: Bearer <token>`, checked before anything else is answered. A body over the size
limit is refused (413) before it is read; images over 4096 pixels a side or 16:1 are refused
before any resize. At most MAX_CONNECTIONS connections are served at once (more get 503 with
Retry-After), and a connection that sends no request within HEADER_TIMEOUT is closed.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from .base import check_scores, is_pairwise, reward_name
from .wire import ENDPOINTS, RETRYABLE_HEADER, TOKEN_ENV, BadRequest, BatchTooLarge, decode_batch, encode_scores

MAX_REQUEST_BYTES = 64 * 2**20
MAX_BATCH = 256
MAX_CONNECTIONS = 16  # connections served at once; more get 503 with Retry-After
HEADER_TIMEOUT = 15.0  # seconds a connection may take to send its request line and headers (or sit idle)
BODY_TIMEOUT = 120.0  # seconds a body may take to arrive


# ---------------------------------------------------------------------------------------------
# Server


class RewardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding one reward; the lock lets one forward pass run at a time
    (a model on one device gains nothing from interleaved calls and may run out of memory)."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple,
        reward: object,
        token: str | None,
        max_request_bytes: int,
        max_batch: int,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.reward = reward
        self.reward_name = reward_name(reward)
        self.kind = "pairwise" if is_pairwise(reward) else "pointwise"
        self.token = token
        self.max_request_bytes = max_request_bytes
        self.max_batch = max_batch
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        """Serve the connection in a thread when a slot is free; else answer 503 at once."""
        if not self.slots.acquire(blocking=False):
            body = json.dumps({"error": "the reward server is busy; retry after a second"}).encode()
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    @property
    def url(self) -> str:
        """http://host:port of the bound socket (port 0 resolved)."""
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def info(self) -> dict:
        return {
            "name": self.reward_name,
            "kind": self.kind,
            "max_request_bytes": self.max_request_bytes,
            "max_batch": self.max_batch,
        }

    def run_reward(self, images: list[torch.Tensor], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, valid) of one batch; a wrong output shape raises InvalidRewardError."""
        with self.lock, torch.no_grad():
            if self.kind == "pairwise":
                raw = self.reward.compare(images[0], images[1], prompts)
            else:
                raw = self.reward.score(images[0], prompts)
        return check_scores(raw, len(prompts), self.reward_name, on_invalid="drop")


class _RewardServer6(RewardServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's batches reuse one connection
    timeout = HEADER_TIMEOUT  # for the request line and headers (and idling); the body gets BODY_TIMEOUT
    server: RewardServer

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        if not self._authorized():  # before anything else is answered: no endpoint is revealed
            return self._error(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>'; the token is the server's --token-env variable)",
            )
        path = urlsplit(self.path).path
        endpoint = ENDPOINTS[self.server.kind]
        if path not in ("/info", endpoint):
            other = "/compare" if endpoint == "/score" else "/score"
            why = (
                f"reward {self.server.reward_name!r} is {self.server.kind}; use POST {endpoint}"
                if path == other
                else f"no endpoint {path!r}; use GET /info or POST {endpoint}"
            )
            return self._error(404, why)
        if path == "/info":
            if method == "POST" and self._read_body() is None:
                return
            return self._send(200, json.dumps(self.server.info()).encode())
        if method != "POST":
            return self._error(405, f"use POST {endpoint}", Allow="POST")
        body = self._read_body()
        if body is not None:
            self._score(body)

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        given = (self.headers.get("Authorization") or "").encode("latin-1")  # http.server decodes headers as latin-1
        return hmac.compare_digest(given, f"Bearer {self.server.token}".encode("ascii"))

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400 (the body left unread)."""
        if self.headers.get("Transfer-Encoding"):
            return self._error(411, "send the body with a Content-Length, not Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if length is None:
            return self._error(411, "a Content-Length header is required")
        try:
            length = int(length)
        except ValueError:
            length = -1
        if length < 0:
            return self._error(
                400, f"Content-Length {self.headers.get('Content-Length')!r} is not a non-negative integer"
            )
        if length > self.server.max_request_bytes:
            return self._too_large(length)
        self.connection.settimeout(BODY_TIMEOUT)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = b""
        finally:
            self.connection.settimeout(HEADER_TIMEOUT)
        if len(body) < length:
            self.close_connection = True  # the client hung up mid-body; nobody to answer
            return None
        return body

    def _too_large(self, length: int) -> None:
        self._error(
            413,
            f"request body of {length} bytes is over this server's limit of {self.server.max_request_bytes} bytes; send fewer images per request",
        )

    def handle_expect_100(self) -> bool:
        """Refuse an announced oversized body (curl sends `Expect: 100-continue`) before it comes."""
        length = self.headers.get("Content-Length", "")
        if length.isdecimal() and int(length) > self.server.max_request_bytes:
            self._too_large(int(length))
            return False
        return super().handle_expect_100()

    def _score(self, body: bytes) -> None:
        try:
            images, prompts = decode_batch(body, self.server.kind, self.server.max_batch)
        except BatchTooLarge as error:
            return self._error(413, str(error))
        except BadRequest as error:
            return self._error(400, str(error))
        try:
            scores, valid = self.server.run_reward(images, prompts)
        except Exception as error:  # any failure of the model goes back to the client, named
            self.log_message("reward %r failed: %s: %s", self.server.reward_name, type(error).__name__, error)
            # the same request would fail again: the client must not retry it
            return self._error(
                500,
                f"reward {self.server.reward_name!r} failed: {type(error).__name__}: {error}",
                **{RETRYABLE_HEADER: "false"},
            )
        self._send(200, encode_scores(scores, valid))

    def _error(self, status: int, message: str, **headers: str) -> None:
        """Answer with {"error": message}; the connection is closed after a POST whose body may
        be unread, so leftover bytes are never taken for the next request."""
        self._send(status, json.dumps({"error": message}).encode(), close=self.command == "POST", **headers)

    def _send(self, status: int, body: bytes, close: bool = False, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        for key, value in headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: object = "-", size: object = "-") -> None:
        if isinstance(code, int) and code >= 400:  # successes are not logged: a line per batch is noise
            super().log_request(code, size)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_server(
    reward: object,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_batch: int = MAX_BATCH,
    max_connections: int = MAX_CONNECTIONS,
) -> RewardServer:
    """A bound (not yet serving) RewardServer for `reward`; see the module docstring."""
    if not (callable(getattr(reward, "score", None)) or callable(getattr(reward, "compare", None))):
        raise ValueError(
            f"serve needs a reward with score(images, prompts) or compare(images_a, images_b, prompts), got {type(reward).__name__}"
        )
    if token is not None and (not token or not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError("the token must be non-empty printable ASCII without spaces")
    if max_request_bytes < 1 or max_batch < 1:
        raise ValueError(f"max_request_bytes and max_batch must be positive, got {max_request_bytes} and {max_batch}")
    if token is None and not is_loopback(host):
        print(
            f"WARNING: serving reward {reward_name(reward)!r} on {host}, which is not loopback, WITHOUT A TOKEN: anyone who can reach "
            f"this port can use the model. Set {TOKEN_ENV} (or --token-env VAR) on the server and the clients.",
            file=sys.stderr,
            flush=True,
        )
    server_class = _RewardServer6 if ":" in host else RewardServer
    return server_class(
        (host.strip("[]"), port), reward, token, int(max_request_bytes), int(max_batch), int(max_connections)
    )


def serve(
    reward: object,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_batch: int = MAX_BATCH,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `reward` until interrupted; `ready(url)` is called once the socket is listening."""
    server = make_server(reward, host, port, token, max_request_bytes, max_batch)
    try:
        if ready is not None:
            ready(server.url)
        server.serve_forever()
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Command line


def parse_options(pairs: Sequence[str]) -> dict:
    """{key: value} from ["key=value", ...], each value read as a YAML scalar (1, 0.5, true, text)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--option {pair!r}: expected key=value with a Python identifier as key")
        if key in options:
            raise ValueError(f"--option {key!r} given twice")
        options[key] = yaml.safe_load(value) if value.strip() else ""
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowrl serve-reward", description="Serve a reward over HTTP (GET /info, POST /score or /compare)."
    )
    parser.add_argument(
        "name", help="reward name: a built-in, a registered or plug-in reward, pairwise:NAME or package.module:object"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default loopback; others need a token)"
    )
    parser.add_argument("--port", type=port_number, default=0, help="port (default 0: a free one, printed on start)")
    parser.add_argument(
        "--token-env",
        default=None,
        help=f"environment variable holding the shared bearer token (default {TOKEN_ENV} when set)",
    )
    parser.add_argument(
        "--device", default=None, help="device for the reward model, e.g. cuda:0 (default: the reward's own)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reward option, value read as YAML (repeatable)",
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=MAX_REQUEST_BYTES / 2**20,
        help="largest request body in MiB (default 64)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=MAX_BATCH, help=f"most images per request (default {MAX_BATCH})"
    )
    return parser


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: a free one), got {text}")
    return value


def _token(token_env: str | None) -> str | None:
    """The token from `token_env` (which must then be set), else from FLOWRL_REWARD_TOKEN if set."""
    if token_env is None:
        return os.environ.get(TOKEN_ENV) or None
    token = os.environ.get(token_env)
    if not token:
        raise ValueError(f"--token-env {token_env}: the environment variable {token_env} is not set or empty")
    return token


def _stop_on_sigterm() -> None:
    """Make SIGTERM end serve_forever the way Ctrl-C does (main thread only); a second SIGTERM
    during the shutdown ends the process at once."""

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    """`serve-reward NAME [...]`: load a reward and serve it until SIGINT or SIGTERM."""
    from .registry import load

    args = _parser().parse_args(argv)
    try:
        token = _token(args.token_env)
        options = parse_options(args.option)
        reward = load(args.name, device=args.device, **options)
    except ValueError as error:
        print(f"serve-reward: error: {error}", file=sys.stderr, flush=True)
        return 2
    if threading.current_thread() is threading.main_thread():
        _stop_on_sigterm()
    auth = "a bearer token is required" if token else "no token: anyone who can reach it may use it"
    announce = lambda url: print(f"serving {reward_name(reward)} ({auth}) at {url}", flush=True)  # noqa: E731
    try:
        serve(reward, args.host, args.port, token, int(args.max_request_mb * 2**20), args.max_batch, ready=announce)
    except KeyboardInterrupt:
        return 0
    except ValueError as error:  # bad limits or token
        print(f"serve-reward: error: {error}", file=sys.stderr, flush=True)
        return 2
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        print(
            f"serve-reward: error: cannot listen on {args.host} port {args.port}: {error}", file=sys.stderr, flush=True
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
