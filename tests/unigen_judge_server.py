"""A stand-in for an OpenAI-compatible UniGenBench judge, for tests/test_unigenbench_judge.py.

    python tests/unigen_judge_server.py --port 0 --mode normal   # prints the bound port, then serves

POST .../chat/completions takes one data-URL image and the judging prompt of
benchmarks.unigenbench.judge, reads the numbered test point lines ("k. name — "description"")
from it and answers deterministically, so a test can compute every verdict on its own:

    test point k is "yes"  iff  (mean 8-bit RGB value of the image / 255 > 0.5) XOR (sha256(name)[0] is odd)

Modes: normal (a JSON object {"k": {"verdict", "reason"}}); prose (the verdicts in one of five
formats chosen by request number: fenced JSON inside prose, markdown "k. name: yes - reason" lines,
a JSON list of objects inside prose, the official <analysis>/<score> lists, JSON keyed by names
under a wrapper key); missing (the last test point left out of every answer); missing-once (left
out of the first answer for each image only); flaky (the first --fail-first requests get HTTP 503);
slow (every answer waits --delay seconds, 0.3 unless given). --delay works in every mode.
--die-after N makes the process exit (os._exit) while handling request N+1, after reading it and
before answering. --log FILE appends one JSON line {"n", "image"} per answer actually sent (written
after the answer, so it survives the process dying).

GET /stats answers {"requests", "answered", "max_in_flight", "requests_per_image",
"answered_per_image", "last"}; images are keyed by the first 16 hex digits of the SHA-256 of the
image file's bytes; last holds the last request's model, temperature, max_tokens, MIME type,
Authorization header and prompt text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time

from openai_stub import State, StubHandler, completion, decode_image, mean_level, parser, read_chat, sampling, serve

MODES = ("normal", "prose", "missing", "missing-once", "flaky", "slow")
TESTPOINT_LINE = re.compile(r'^(\d+)\. (.+?)(?: — "(.*)")?$')


class UnigenState(State):
    """The shared counters, plus per-image counts and the --log lock."""

    stats_keys = State.stats_keys + ("requests_per_image", "answered_per_image")

    def __init__(self) -> None:
        super().__init__()
        self.requests_per_image: dict[str, int] = {}
        self.answered_per_image: dict[str, int] = {}
        self.log_lock = threading.Lock()


def image_key(data: bytes) -> str:
    """How /stats and --log name an image: the start of the SHA-256 of its file bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def verdict(bright: bool, name: str) -> bool:
    """The deterministic rule: yes iff the image is bright XOR the name's hash byte is odd."""
    return bright != bool(hashlib.sha256(name.encode("utf-8")).digest()[0] & 1)


def render(points: list[tuple[int, str, bool]], style: int) -> str:
    """An answer giving (number, name, yes?) verdicts in one of the prose formats."""
    word = lambda yes: "yes" if yes else "no"  # noqa: E731
    reason = lambda k, name: f"checked {name} (point {k})"  # noqa: E731
    if style == 0:
        body = json.dumps(
            {str(k): {"verdict": word(yes).capitalize(), "reason": reason(k, name)} for k, name, yes in points},
            indent=2,
        )
        return (
            f"Let me look at the image carefully.\n\nHere is my assessment:\n```json\n{body}\n```\nI hope this helps."
        )
    if style == 1:
        lines = [f"**{k}. {name}**: {word(yes).upper()} — {reason(k, name)}" for k, name, yes in points]
        return "Assessment of each test point:\n\n" + "\n".join(lines) + "\n\nOverall the image is fine."
    if style == 2:
        items = [
            {"id": k, "testpoint": name, "correct": yes, "explanation": reason(k, name)} for k, name, yes in points
        ]
        return f"Sure. The verdicts are {json.dumps(items)} as requested."
    if style == 3:
        analysis = json.dumps([reason(k, name) for k, name, _ in points], ensure_ascii=False)
        scores = json.dumps([int(yes) for _, _, yes in points])
        return f"<description>\n<analysis>{analysis}</analysis>\n<score>{scores}</score>\n</description>"
    names = [name for _, name, _ in points]
    keys = names if len(set(names)) == len(names) else [f"Test point {k}" for k, _, _ in points]
    results = {
        key: f"{'Correct' if yes else 'Incorrect'}. {reason(k, name)}" for key, (k, name, yes) in zip(keys, points)
    }
    return "Results follow.\n" + json.dumps({"results": results}, ensure_ascii=False)


class Handler(StubHandler):
    """Judges one image's numbered test points by the deterministic rule, as --mode says."""

    state: UnigenState

    def answer(self, number: int, body: bytes) -> None:
        args, state = self.args, self.state
        if args.die_after is not None and number > args.die_after:
            sys.stdout.flush()
            os._exit(3)  # killed mid-request: this client sees the connection drop, later ones are refused
        if args.mode == "flaky" and number <= args.fail_first:
            return self.send(503, b'{"error": {"message": "model is loading"}}')
        if args.delay:
            time.sleep(args.delay)
        request, urls, text = read_chat(body)
        if len(urls) != 1:
            return self.send(400, json.dumps({"error": {"message": f"expected 1 image, got {len(urls)}"}}).encode())
        data, mime = decode_image(urls[0])
        key = image_key(data)
        bright = mean_level(data) / 255.0 > 0.5
        points = [
            (int(m.group(1)), m.group(2), verdict(bright, m.group(2)))
            for m in map(TESTPOINT_LINE.match, text.splitlines())
            if m
        ]
        with state.lock:
            seen_before = state.requests_per_image.get(key, 0)
            state.requests_per_image[key] = seen_before + 1
            state.last = dict(
                **sampling(request), mime=mime, authorization=self.headers.get("Authorization"), prompt=text
            )
        if not points:
            content = "I could not find any test points in your message."
        else:
            if args.mode == "missing" or (args.mode == "missing-once" and seen_before == 0):
                points = points[:-1]
            if args.mode == "prose":
                content = render(points, number % 5)
            else:
                content = json.dumps(
                    {
                        str(k): {"verdict": "yes" if yes else "no", "reason": f"{name} checked"}
                        for k, name, yes in points
                    }
                )
        self.send(200, completion(number, request.get("model"), content))
        with state.lock:
            state.answered += 1
            state.answered_per_image[key] = state.answered_per_image.get(key, 0) + 1
        if args.log:
            with state.log_lock, open(args.log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"n": number, "image": key}) + "\n")


def main() -> None:
    command = parser(__doc__.split("\n\n")[0], MODES)
    command.add_argument(
        "--die-after", type=int, default=None, help="exit while handling request N+1 (requests counted from 1)"
    )
    command.add_argument("--fail-first", type=int, default=2, help="flaky: how many requests get HTTP 503")
    command.add_argument(
        "--delay", type=float, default=None, help="seconds to sleep before every answer (slow: 0.3 by default)"
    )
    command.add_argument("--log", default=None, help="append one JSON line per answer sent")
    args = command.parse_args()
    if args.delay is None:
        args.delay = 0.3 if args.mode == "slow" else 0.0
    serve(Handler, args, UnigenState())


if __name__ == "__main__":
    main()
