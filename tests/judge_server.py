"""A stand-in for an OpenAI-compatible VLM judge, for tests/test_rewards_vlm_judge.py.

    python tests/judge_server.py --port 0 --mode normal     # prints the bound port, then serves

POST .../chat/completions decodes the two data-URL images of the last user message and prefers
the brighter one (mean of the 8-bit pixels), answering like UnifiedReward-Think:
"<think>...</think><answer>Image 1 is better</answer>", with a decoy verdict for the other image
inside <think> so that only a reader of the <answer> block gets it right. Equal brightness is a
tie, or "Image 1 is better" with --position-bias (a judge that favours the first image shown).

Modes: normal; malformed (prompt text "good..." answered normally, "json..." with a body that is
not JSON, anything else with text holding no verdict); flaky (the first --fail-first requests
alternately get HTTP 503 and a connection closed without an answer); slow (the first
--slow-count requests sleep --slow-seconds before answering); die (the process exits while
handling request --die-at, counted from 1). --delay sleeps before every answer, so requests
overlap; --api-key makes every POST need `Authorization: Bearer KEY` (401 otherwise).
GET /stats answers {"requests", "answered", "max_in_flight", "unauthorized", "last", "prompts"}:
last is the last request's model, temperature, max_tokens, image MIME types and prompt text,
prompts every judged request's prompt text in arrival order.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

MODES = ("normal", "malformed", "flaky", "slow", "die")


class State:
    """Counters shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.unauthorized = 0
        self.last: dict = {}
        self.prompts: list[str] = []


def brightness(url: str) -> tuple[float, str]:
    """(mean 8-bit pixel value, MIME type) of a data:image/...;base64,... URL."""
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError(f"expected a base64 image data URL, got {url[:40]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
    return float(np.asarray(image, dtype=np.float64).mean()), header[len("data:"):-len(";base64")]


def verdict_text(first: float, second: float, position_bias: bool) -> str:
    """A UnifiedReward-Think-like answer preferring the brighter image."""
    if first > second or (first == second and position_bias):
        winner, decoy = "Image 1 is better", "Image 2 is better"
    elif second > first:
        winner, decoy = "Image 2 is better", "Image 1 is better"
    else:
        return f"<think>Image 1: {first:.2f}, Image 2: {second:.2f}; they look alike.</think>\n<answer>Both images are equally good</answer>"
    return f"<think>Brightness: Image 1 {first:.2f}, Image 2 {second:.2f}. In composition {decoy.lower()}, but on total score {winner}.</think>\n<answer>{winner}</answer>"


def make_handler(args: argparse.Namespace, state: State) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *values) -> None:  # keep the test output quiet
            pass

        def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/stats":
                return self.send(404, b'{"error": {"message": "not found"}}')
            with state.lock:
                stats = dict(requests=state.requests, answered=state.answered, max_in_flight=state.max_in_flight,
                             unauthorized=state.unauthorized, last=state.last, prompts=state.prompts)
            self.send(200, json.dumps(stats).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.requests += 1
                number = state.requests
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self.answer(number, body)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def answer(self, number: int, body: bytes) -> None:
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self.send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            if args.api_key is not None and self.headers.get("Authorization") != f"Bearer {args.api_key}":
                with state.lock:
                    state.unauthorized += 1
                return self.send(401, b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}')
            if args.mode == "die" and number >= args.die_at:
                sys.stdout.flush()
                os._exit(3)  # killed mid-request: the client sees the connection drop, then refusals
            if args.mode == "flaky" and number <= args.fail_first:
                if number % 2:
                    return self.send(503, b'{"error": {"message": "model is loading"}}')
                self.close_connection = True  # hang up without an answer
                return
            if args.mode == "slow" and number <= args.slow_count:
                time.sleep(args.slow_seconds)
            if args.delay:
                time.sleep(args.delay)
            request = json.loads(body)
            parts = request["messages"][-1]["content"]
            urls = [part["image_url"]["url"] for part in parts if part.get("type") == "image_url"]
            prompt = "".join(part.get("text", "") for part in parts if part.get("type") == "text")
            if len(urls) != 2:
                return self.send(400, json.dumps({"error": {"message": f"expected 2 images, got {len(urls)}"}}).encode())
            (first, mime_first), (second, mime_second) = brightness(urls[0]), brightness(urls[1])
            with state.lock:
                state.last = dict(model=request.get("model"), temperature=request.get("temperature"), max_tokens=request.get("max_tokens"),
                                  mimes=[mime_first, mime_second], prompt=prompt)
                state.prompts.append(prompt)
            text = verdict_text(first, second, args.position_bias)
            if args.mode == "malformed":
                image_prompt = prompt.split('Prompt: "', 1)[-1]
                if image_prompt.startswith("json"):
                    return self.send(200, b'{"choices": [{"message": {"content": "Image 1 is bet')
                if not image_prompt.startswith("good"):
                    text = "<think>Both have merits.</think> I find it hard to say which I like."
            completion = {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()), "model": request.get("model"),
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
            with state.lock:
                state.answered += 1
            self.send(200, json.dumps(completion).encode())

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; the bound one is printed first")
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before every answer")
    parser.add_argument("--position-bias", action="store_true", help="answer Image 1 when both are equally bright")
    parser.add_argument("--fail-first", type=int, default=3, help="flaky: how many requests fail")
    parser.add_argument("--slow-count", type=int, default=1, help="slow: how many requests are slow")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="slow: how long they take")
    parser.add_argument("--die-at", type=int, default=2, help="die: the request (from 1) during which the process exits")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args, State()))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
