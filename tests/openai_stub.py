"""What the OpenAI-compatible stand-in servers under tests/ share, and how tests run them.

Server side: `State` (the counters behind GET /stats), `StubHandler` (quiet logging, GET /stats
and /v1/models,
POST counting and the /chat/completions route; a server subclasses it and writes `answer`), the
request/answer helpers and `parser`/`serve`, which print the bound port on the first line.
Test side: `start_server`/`stop_server` run one as a subprocess, `StubServer` adds `stats()`, and
`server_fixture(script)` makes a pytest fixture that starts any number and stops them all afterwards.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

# --- server side ------------------------------------------------------------------------------


class State:
    """Counters shared by the handler threads; a server's subclass adds its own to `stats_keys`."""

    stats_keys: tuple[str, ...] = ("requests", "answered", "max_in_flight", "last")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.last: dict = {}

    def stats(self) -> dict:
        """The GET /stats answer; call it holding `lock`."""
        return {key: getattr(self, key) for key in self.stats_keys}


class StubHandler(BaseHTTPRequestHandler):
    """GET /stats and counted POSTs; a server's subclass answers /chat/completions in `answer`."""

    protocol_version = "HTTP/1.1"
    args: argparse.Namespace  # set by `serve`
    state: State

    def log_message(self, format: str, *values) -> None:  # keep the test output quiet
        pass

    def send(self, status: int, body: bytes) -> None:
        """Send a JSON body with `status`."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":  # the served model names (--models)
            listed = [{"id": name, "object": "model"} for name in self.args.models.split(",") if name]
            return self.send(200, json.dumps({"object": "list", "data": listed}).encode())
        if self.path.rstrip("/") != "/stats":
            return self.send(404, b'{"error": {"message": "not found"}}')
        with self.state.lock:
            stats = self.state.stats()
        self.send(200, json.dumps(stats).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        state = self.state
        with state.lock:
            state.requests += 1
            number = state.requests
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self.send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            self.answer(number, body)
        finally:
            with state.lock:
                state.in_flight -= 1

    def answer(self, number: int, body: bytes) -> None:
        """Answer chat completion request `number` (counted from 1)."""
        raise NotImplementedError


def read_chat(body: bytes) -> tuple[dict, list[str], str]:
    """(request, image URLs, joined text) of a chat completion request's last message."""
    request = json.loads(body)
    parts = request["messages"][-1]["content"]
    urls = [part["image_url"]["url"] for part in parts if part.get("type") == "image_url"]
    return request, urls, "".join(part.get("text", "") for part in parts if part.get("type") == "text")


def decode_image(url: str) -> tuple[bytes, str]:
    """(file bytes, MIME type) of a data:image/...;base64,... URL."""
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError(f"expected a base64 image data URL, got {url[:40]!r}")
    return base64.b64decode(payload), header[len("data:") : -len(";base64")]


def mean_level(data: bytes) -> float:
    """The mean 8-bit RGB value of an image file's bytes."""
    return float(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).mean())


def sampling(request: dict) -> dict:
    """The model, temperature, max_tokens and do_sample a request asked for (None when not sent)."""
    return dict(
        model=request.get("model"),
        temperature=request.get("temperature"),
        max_tokens=request.get("max_tokens"),
        do_sample=request.get("do_sample"),
    )


def completion(number: int, model: str | None, content: str) -> bytes:
    """The JSON body of a chat.completion answering `content`."""
    return json.dumps(
        {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": len(content)},  # fixed, and the answer's characters
        }
    ).encode()


def parser(description: str, modes: tuple[str, ...]) -> argparse.ArgumentParser:
    """A command line with --port and --mode; a server adds its own flags."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--port", type=int, default=0, help="0 picks a free port; the bound one is printed first")
    result.add_argument("--mode", choices=modes, default="normal")
    result.add_argument(
        "--models",
        default="test-judge,QwenVL,UnifiedReward,CodeGoat24/UnifiedReward-Think-qwen-7b",
        help="GET /v1/models lists these (comma-separated)",
    )
    return result


def serve(handler: type[StubHandler], args: argparse.Namespace, state: State) -> None:
    """Serve `handler` on 127.0.0.1:args.port until killed, printing the bound port first."""
    bound = type(handler.__name__, (handler,), {"args": args, "state": state})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), bound)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --- test side --------------------------------------------------------------------------------


def start_server(script: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Run `python SCRIPT --port 0 ARGS`; (the process, its API root http://127.0.0.1:PORT/v1)."""
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        port = lines.get(timeout=30).strip()
    except queue.Empty:
        port = ""
    if not port.isdigit():
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(f"{Path(script).name} did not start ({args}); stderr:\n{process.stderr.read()}")
    return process, f"http://127.0.0.1:{port}/v1"


def stop_server(process: subprocess.Popen) -> None:
    """Kill a server started by `start_server` (if still running) and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for pipe in (process.stdout, process.stderr):
        pipe.close()


class StubServer:
    """A running stand-in server: its process `proc` and API root `url` (…/v1)."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc, self.url = start_server(script, *args)

    def stats(self) -> dict:
        """The server's GET /stats answer."""
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats", timeout=5) as response:
            return json.loads(response.read())


def server_fixture(script: Path) -> Callable:
    """A pytest fixture start_server(*args) -> a running StubServer of `script`; all are stopped afterwards."""
    import pytest  # the servers themselves do without it

    @pytest.fixture
    def fixture() -> Iterator[Callable[..., StubServer]]:
        started: list[StubServer] = []

        def start(*args: str) -> StubServer:
            started.append(StubServer(script, *args))
            return started[-1]

        try:
            yield start
        finally:
            for server in started:
                stop_server(server.proc)

    return fixture
