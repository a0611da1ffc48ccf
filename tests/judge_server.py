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

import json
import os
import sys
import time

from openai_stub import State, StubHandler, completion, decode_image, mean_level, parser, read_chat, sampling, serve

MODES = ("normal", "malformed", "flaky", "slow", "die")


class JudgeState(State):
    """The shared counters, plus refused requests and every judged prompt."""

    stats_keys = State.stats_keys + ("unauthorized", "prompts")

    def __init__(self) -> None:
        super().__init__()
        self.unauthorized = 0
        self.prompts: list[str] = []


def verdict_text(first: float, second: float, position_bias: bool) -> str:
    """A UnifiedReward-Think-like answer preferring the brighter image."""
    if first > second or (first == second and position_bias):
        winner, decoy = "Image 1 is better", "Image 2 is better"
    elif second > first:
        winner, decoy = "Image 2 is better", "Image 1 is better"
    else:
        return f"<think>Image 1: {first:.2f}, Image 2: {second:.2f}; they look alike.</think>\n<answer>Both images are equally good</answer>"
    return f"<think>Brightness: Image 1 {first:.2f}, Image 2 {second:.2f}. In composition {decoy.lower()}, but on total score {winner}.</think>\n<answer>{winner}</answer>"


class Handler(StubHandler):
    """Judges two images by brightness, failing as --mode says."""

    state: JudgeState

    def answer(self, number: int, body: bytes) -> None:
        args, state = self.args, self.state
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
        request, urls, prompt = read_chat(body)
        if len(urls) != 2:
            return self.send(400, json.dumps({"error": {"message": f"expected 2 images, got {len(urls)}"}}).encode())
        (data_first, mime_first), (data_second, mime_second) = decode_image(urls[0]), decode_image(urls[1])
        first, second = mean_level(data_first), mean_level(data_second)
        with state.lock:
            state.last = dict(**sampling(request), mimes=[mime_first, mime_second], prompt=prompt)
            state.prompts.append(prompt)
        text = verdict_text(first, second, args.position_bias)
        if args.mode == "malformed":
            image_prompt = prompt.split('Prompt: "', 1)[-1]
            if image_prompt.startswith("json"):
                return self.send(200, b'{"choices": [{"message": {"content": "Image 1 is bet')
            if not image_prompt.startswith("good"):
                text = "<think>Both have merits.</think> I find it hard to say which I like."
        with state.lock:
            state.answered += 1
        self.send(200, completion(number, request.get("model"), text))


def main() -> None:
    command = parser(__doc__.split("\n\n")[0], MODES)
    command.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    command.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before every answer")
    command.add_argument("--position-bias", action="store_true", help="answer Image 1 when both are equally bright")
    command.add_argument("--fail-first", type=int, default=3, help="flaky: how many requests fail")
    command.add_argument("--slow-count", type=int, default=1, help="slow: how many requests are slow")
    command.add_argument("--slow-seconds", type=float, default=5.0, help="slow: how long they take")
    command.add_argument(
        "--die-at", type=int, default=2, help="die: the request (from 1) during which the process exits"
    )
    serve(Handler, command.parse_args(), JudgeState())


if __name__ == "__main__":
    main()
