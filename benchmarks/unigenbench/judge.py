"""Judge UniGenBench images with a vision-language model behind an OpenAI-compatible chat API.

    judge = Judge(model="QwenVL")  # the name a vLLM server was started with (--served-model-name)
    with JudgmentStore("judgments.sqlite") as store:
        report = judge.judge_all([(f"images/{p.index}_{k}.png", p) for p in prompts for k in range(4)], store)

The judge is Gemini 2.5 Pro (any OpenAI-compatible endpoint), or one of the released offline
evaluation models (e.g. CodeGoat24/UniGenBench-EvalModel-qwen-72b-v1) served with vLLM. Each image
is ONE POST to {base_url}/chat/completions carrying the image file as a base64 data URL and our
judging prompt, which lists the prompt's test points by number with their descriptions and asks
for a JSON object of per-test-point yes/no verdicts with a short reason. `parse_answer` reads that
JSON and, failing it, fenced JSON inside prose, JSON lists, "3. Style: yes - reason" lines, or the
official scripts' `<score>[1, 0, ...]</score>` lists. Requests are retried on connection errors,
timeouts, 429 and 5xx (rewards.http); an answer that leaves test points without a verdict is asked
again `parse_retries` times with the same request, then raises UnparseableJudgment naming them.

`judge_all` judges, `concurrency` at a time, only the images the store lacks, and records each
image in the store as soon as its answer arrives, so a crash loses at most the requests in flight
and a rerun asks only for what is missing. A failed image does not stop the others: failures are
collected, returned in the report (image -> error) and summarised in a RuntimeWarning; rerun
with the same store to retry just those.

With `protocol=` (protocol.OfficialProtocol) the judge sends the official request instead, the one
the released evaluation models were fine-tuned on, and reads answers by the official rule; our own
prompt stays the default of this class (`flowrl eval unigenbench` defaults to the official one).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import requests
from tqdm.auto import tqdm

from flowrl.rewards.http import (
    chat_answer_text,
    check_chat_server,
    check_client_numbers,
    check_url,
    pooled_session,
    post_with_retries,
    request_headers,
    warn_token_in_clear,
)

from .protocol import ANSWERS, MAX_TOKENS, SERVED_MODEL, OfficialProtocol, official_image_url, parse_official
from .store import JudgmentStore
from .types import BenchPrompt, Verdict

URL_ENV = "FLOWRL_JUDGE_URL"
DEFAULT_URL = "http://127.0.0.1:8000/v1"
# The released offline judge; the official scripts serve it with --served-model-name QwenVL, in
# which case pass model="QwenVL". For Gemini through an OpenAI-compatible gateway: "gemini-2.5-pro".
DEFAULT_MODEL = "CodeGoat24/UniGenBench-EvalModel-qwen-72b-v1"
LANGUAGES = ("en", "zh")
IMAGE_NAME = re.compile(r"^(?P<index>\d+)_(?P<k>\d+)\.[A-Za-z]+$")  # {prompt index}_{image number}.png

# Our judging prompts. Fields: {prompt}, {testpoints} (one "k. name — "description"" line each),
# {count}. Literal braces are doubled.
INSTRUCTIONS = {
    "en": """You are grading an image that a text-to-image model generated from this prompt:

"{prompt}"

Check the image against each numbered test point below. Each names the skill being tested and quotes the part of the prompt it concerns.

{testpoints}

For every test point, decide whether the image shows what that part of the prompt asks for. Judge only what is visible: answer "yes" when it is clearly and correctly depicted, "no" when it is missing, wrong, distorted or cannot be made out.

Reply with one JSON object and nothing else. Use the test point numbers as keys and give each a "verdict" ("yes" or "no") and a one-sentence "reason", for example:
{{"1": {{"verdict": "yes", "reason": "..."}}, "2": {{"verdict": "no", "reason": "..."}}}}
Include all {count} test points.""",
    "zh": """你是一名图像评审。下面这张图像是文生图模型根据以下提示词生成的：

「{prompt}」

请对照下面每个编号的考点检查图像。每个考点给出考察的维度，以及它对应的那部分提示词。

{testpoints}

对每个考点，判断图像是否画出了这部分提示词所要求的内容。只依据图像中直接可见的内容：清楚且正确地呈现时回答 "yes"，缺失、错误、变形或无法辨认时回答 "no"。

只输出一个 JSON 对象，不要输出其他内容。以考点编号为键，每项给出 "verdict"（"yes" 或 "no"）和一句话的 "reason"，例如：
{{"1": {{"verdict": "yes", "reason": "..."}}, "2": {{"verdict": "no", "reason": "..."}}}}
必须包含全部 {count} 个考点。""",
}


class UnparseableJudgment(RuntimeError):
    """The judge answered, but some test points of an image got no readable verdict."""

    def __init__(self, message: str, image: str, missing: list[str], answer: str) -> None:
        super().__init__(message)
        self.image, self.missing, self.answer = image, missing, answer


# ---------------------------------------------------------------------------------------------
# Reading an answer: {position (0-based): (correct, reason)} from whatever format the judge used.

_FLAG_WORDS = [  # longest first, negatives before the positives they contain
    ("not satisfied", False),
    ("unsatisfied", False),
    ("not met", False),
    ("incorrect", False),
    ("not correct", False),
    ("satisfied", True),
    ("correct", True),
    ("wrong", False),
    ("failed", False),
    ("fail", False),
    ("passed", True),
    ("pass", True),
    ("false", False),
    ("true", True),
    ("yes", True),
    ("no", False),
    ("met", True),
    ("absent", False),
    ("missing", False),
    ("present", True),
    ("1", True),
    ("0", False),
    ("y", True),
    ("n", False),
    ("不符合", False),
    ("不满足", False),
    ("不正确", False),
    ("未满足", False),
    ("符合", True),
    ("满足", True),
    ("正确", True),
    ("错误", False),
    ("是", True),
    ("否", False),
    ("✅", True),
    ("✔", True),
    ("✓", True),
    ("❌", False),
    ("✗", False),
    ("✘", False),
]
_FLAG = "|".join(re.escape(word) for word, _ in _FLAG_WORDS)
_FLAG_VALUES = dict(_FLAG_WORDS)
_LEADING_FLAG = re.compile(rf"^(?:{_FLAG})(?![a-z0-9])", re.I)
_VERDICT_KEYS = (
    "verdict",
    "answer",
    "result",
    "score",
    "correct",
    "satisfied",
    "pass",
    "passed",
    "judgment",
    "judgement",
    "label",
    "value",
)
_REASON_KEYS = ("reason", "explanation", "analysis", "rationale", "justification", "comment", "why")
_ID_KEYS = (
    "id",
    "number",
    "num",
    "no",
    "index",
    "k",
    "testpoint_id",
    "test_point",
    "testpoint",
    "checkpoint",
    "name",
    "point",
)
_NUMBERED_KEY = re.compile(
    r"^\s*(?:(?:test\s*point|testpoint|checkpoint|point|tp|考点)\s*)?#?\s*(\d+)(?![0-9A-Za-z])", re.I
)
_LINE = re.compile(  # "1. Style: yes - reason", "**2) Attribute - Color** — No. reason", "Style = true"
    rf"^\s*(?:[-*•>]\s*)?(?:(?:test\s*point|checkpoint|考点)\s*)?(?:#?(?P<num>\d+)\s*[.):、]\s*)?(?P<label>[^:：=]*?)\s*[:：=\-–—]+\s*"
    rf"(?:verdict\s*[:：=]\s*)?(?P<flag>{_FLAG})(?![a-z0-9])[\s.,;:)\-–—]*(?P<reason>.*)$",
    re.I,
)
_OPENING = re.compile(r"[\[{]")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def read_flag(value: object) -> bool | None:
    """True/False for yes/no, true/false, 1/0, correct/incorrect, pass/fail (and 是/否, 符合/不符合),
    case-insensitive, also as the first word of a longer string; None when not a verdict."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if not isinstance(value, str):
        return None
    word = value.strip().strip("*`'\"[](). ").lower()
    if match := _LEADING_FLAG.match(word):
        return _FLAG_VALUES[match.group(0).lower()]
    return None


def _normal(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("–", "-").replace("—", "-")).strip().lower()


def _position(key: object, names: list[str]) -> int | None:
    """The 0-based test point a key names: its number (1-based) or its unique name."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key - 1 if 1 <= key <= len(names) else None
    if not isinstance(key, str):
        return None
    if match := _NUMBERED_KEY.match(key):
        number = int(match.group(1))
        return number - 1 if 1 <= number <= len(names) else None
    wanted = _normal(key.strip("*`'\" "))
    hits = [i for i, name in enumerate(names) if _normal(name) == wanted]
    return hits[0] if len(hits) == 1 else None  # a name listed twice is ambiguous without its number


def _entry(value: object) -> tuple[bool, str] | None:
    """(correct, reason) from one entry: a bare flag, or an object with a verdict-like key."""
    flag = read_flag(value)
    if flag is not None:
        reason = (
            _LEADING_FLAG.sub("", value.strip().strip("*`'\"[](). ")).strip(" .,;:-–—")
            if isinstance(value, str)
            else ""
        )
        return flag, reason
    if isinstance(value, dict):
        lowered = {str(key).lower(): item for key, item in value.items()}
        for key in _VERDICT_KEYS:
            if key in lowered and (flag := read_flag(lowered[key])) is not None:
                reason = next((str(lowered[k]) for k in _REASON_KEYS if k in lowered and lowered[k] is not None), "")
                return flag, reason.strip()
    return None


def _from_json(value: object, names: list[str], depth: int = 0) -> dict[int, tuple[bool, str]]:
    """Verdicts from a parsed JSON value: {number or name: entry}, a list of entries with ids, a
    list aligned with the test points, or any of these under a wrapper key."""
    found: dict[int, tuple[bool, str]] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            position, entry = _position(key, names), _entry(item)
            if position is not None and entry is not None:
                found.setdefault(position, entry)
    elif isinstance(value, list):
        for offset, item in enumerate(value):
            entry = _entry(item)
            if entry is None:
                continue
            ids = [item[key] for key in _ID_KEYS if isinstance(item, dict) and key in item]
            positions = [p for p in (_position(i, names) for i in ids) if p is not None]
            if positions:
                found.setdefault(positions[0], entry)
            elif len(value) == len(names):
                found.setdefault(offset, entry)
    if not found and depth < 2:  # {"verdicts": {...}} or {"results": [...]}
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        for child in children:
            if isinstance(child, (dict, list)):
                inner = _from_json(child, names, depth + 1)
                if len(inner) > len(found):
                    found = inner
    return found


def _json_values(text: str) -> Iterable[object]:
    """Every JSON object or array in the text: fenced blocks first, then any embedded in prose."""
    decoder = json.JSONDecoder()
    for block in _FENCE.findall(text):
        try:
            yield json.loads(block.strip())
        except json.JSONDecodeError:
            pass
    start, tries = 0, 0
    while tries < 500 and (match := _OPENING.search(text, start)):
        tries += 1
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            start = match.start() + 1
            continue
        yield value
        start = end


def _from_official(text: str, names: list[str]) -> dict[int, tuple[bool, str]]:
    """Verdicts from the official scripts' answer: <score>[1, 0, ...]</score> with <analysis>[...]."""
    lists = {}
    for tag in ("score", "analysis"):
        match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S | re.I)
        if match:
            try:
                lists[tag] = (
                    json.loads(match.group(1).strip().replace("'", '"'))
                    if tag == "score"
                    else _loose_list(match.group(1))
                )
            except json.JSONDecodeError:
                pass
    scores, reasons = lists.get("score"), lists.get("analysis") or []
    if not isinstance(scores, list) or len(scores) != len(names):
        return {}
    found = {}
    for position, score in enumerate(scores):
        flag = read_flag(score)
        if flag is not None:
            found[position] = (flag, str(reasons[position]) if len(reasons) == len(names) else "")
    return found


def _loose_list(text: str) -> list:
    """A JSON list of strings, else nothing (the analysis is only used for explanations)."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _from_lines(text: str, names: list[str]) -> dict[int, tuple[bool, str]]:
    """Verdicts from lines such as "1. Style: yes - reason" or "Attribute - Color: no"."""
    found: dict[int, tuple[bool, str]] = {}
    for line in text.splitlines():
        match = _LINE.match(re.sub(r"[*`_]{1,3}", "", line))
        if not match:
            continue
        if match.group("num"):
            position = _position(int(match.group("num")), names)
        else:
            position = _position(match.group("label"), names)
        if position is not None:
            found.setdefault(position, (_FLAG_VALUES[match.group("flag").lower()], match.group("reason").strip()))
    return found


def parse_answer(text: str, names: list[str]) -> dict[int, tuple[bool, str]]:
    """{0-based test point position: (correct, reason)} for every test point the answer gives a
    verdict for: from the official <score> list when it is complete, else from the JSON value in
    the answer that covers most test points (the format we ask for), with the test points it lacks
    filled from "k. name: yes|no - reason" lines. <think> blocks are ignored."""
    if not isinstance(text, str):
        return {}
    text = _THINK.sub("", text)
    found = _from_official(text, names)  # specific tags, so read first: its bare [0, 1] list would also pass for JSON
    if len(found) == len(names):
        return found
    for value in _json_values(text):
        candidate = _from_json(value, names)
        if len(candidate) > len(found):
            found = candidate
        if len(found) == len(names):
            return found
    for position, entry in _from_lines(text, names).items():
        found.setdefault(position, entry)
    return found


# ---------------------------------------------------------------------------------------------


class Judge:
    """judge_image(path, prompt) -> (verdicts, raw answer); judge_all(items, store) judges what a
    store lacks. Talks to an OpenAI-compatible chat completions API."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 1.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        language: str = "en",
        parse_retries: int | None = None,
        instruction: str | None = None,
        protocol: OfficialProtocol | None = None,
        requests_per_minute: float | None = None,
    ) -> None:
        """base_url: the API root (…/v1), from $FLOWRL_JUDGE_URL when not given, else
        http://127.0.0.1:8000/v1; model: the served model name; api_key_env: the environment
        variable holding the key sent as a Bearer token (unset: no header); concurrency: images
        judged at once; timeout, retries, backoff: per request, as rewards.http; temperature,
        max_tokens: sampling (None leaves it to the server); language: "en" or "zh", the language
        of our judging prompt (match the prompt file); parse_retries: how many more times an
        answer missing some verdicts is asked again; instruction: a str.format template replacing
        ours, with {prompt}, {testpoints} and optionally {count}; protocol: the official request
        and answer rule (protocol.OfficialProtocol) instead of ours, which changes the defaults to
        the official client's: model QwenVL, no temperature, max_tokens 4096, 11 answers at most."""
        official = protocol is not None
        if official and instruction is not None:
            raise ValueError("UniGenBench judge: instruction= replaces our prompt; the official protocol has its own")
        model = model if model is not None else (SERVED_MODEL if official else DEFAULT_MODEL)
        temperature = temperature if temperature is not None or official else 0.0
        max_tokens = max_tokens if max_tokens is not None or not official else MAX_TOKENS
        parse_retries = parse_retries if parse_retries is not None else (ANSWERS - 1 if official else 2)
        self.protocol = protocol
        self.base_url = check_url(
            base_url if base_url is not None else os.environ.get(URL_ENV) or DEFAULT_URL,
            "UniGenBench judge base_url",
            DEFAULT_URL,
        )
        self.endpoint = (
            self.base_url if self.base_url.endswith("/chat/completions") else self.base_url + "/chat/completions"
        )
        if language not in LANGUAGES:
            raise ValueError(f"UniGenBench judge language must be one of {LANGUAGES}, got {language!r}")
        instruction = INSTRUCTIONS[language] if instruction is None else instruction
        _check_options(
            model=model,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            temperature=0.0 if temperature is None else temperature,
            max_tokens=max_tokens,
            parse_retries=parse_retries,
            instruction=instruction,
        )
        self.model, self.language, self.instruction = model, language, instruction
        self.concurrency, self.timeout, self.retries, self.backoff = (
            concurrency,
            float(timeout),
            retries,
            float(backoff),
        )
        self.temperature = None if temperature is None else float(temperature)
        self.max_tokens, self.parse_retries = max_tokens, parse_retries
        self.api_key_env = api_key_env
        self.headers = warn_token_in_clear(self.base_url, request_headers("application/json", api_key_env))
        self.session = pooled_session(concurrency)
        if requests_per_minute is not None and not requests_per_minute > 0:
            raise ValueError(f"UniGenBench judge requests_per_minute must be positive, got {requests_per_minute!r}")
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0  # between request starts
        self._pace = threading.Lock()
        self._next_start = 0.0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}  # summed over this judge's answers

    def __repr__(self) -> str:
        return f"Judge({self.model!r} at {self.base_url!r}, language={self.language!r})"

    def build_instruction(self, prompt: BenchPrompt) -> str:
        """The judging prompt for one BenchPrompt: the official one, or ours (numbered test points)."""
        if self.protocol is not None:
            names = [point.name for point in prompt.testpoints]
            return self.protocol.render(prompt.text, names, [point.description for point in prompt.testpoints])
        lines = [
            f'{k}. {point.name} — "{point.description}"' if point.description.strip() else f"{k}. {point.name}"
            for k, point in enumerate(prompt.testpoints, start=1)
        ]
        return self.instruction.format(prompt=prompt.text, testpoints="\n".join(lines), count=len(lines))

    def request_body(self, image_url: str, prompt: BenchPrompt) -> dict:
        """The chat completions request judging one image (given as a data URL) against a prompt."""
        content = [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": self.build_instruction(prompt)},
        ]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        if self.protocol is not None:
            body["do_sample"] = False  # as the official client sends it (vLLM ignores it)
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def judge_image(self, image_path: str | os.PathLike, prompt: BenchPrompt) -> tuple[list[Verdict], str]:
        """(one Verdict per test point of the prompt, in order; the raw answer) for one image,
        from one request (asked again up to parse_retries times while verdicts are missing)."""
        name = Path(image_path).name
        if not prompt.testpoints:
            raise ValueError(f"image {name}: prompt {prompt.index} has no test points to judge")
        encode = official_image_url if self.protocol is not None else image_data_url
        body = self.request_body(encode(image_path), prompt)
        names = [point.name for point in prompt.testpoints]
        text, missing = "", list(range(len(names)))
        for _ in range(1 + self.parse_retries):
            response = self._post(body, name)
            self._count_usage(response)
            text, _, problem = chat_answer_text(response)
            found = self.read(text, names) if problem is None else {}
            missing = [i for i in range(len(names)) if i not in found]
            if not missing:
                verdicts = [
                    Verdict(
                        image=name,
                        prompt_index=prompt.index,
                        testpoint=names[i],
                        correct=found[i][0],
                        explanation=found[i][1],
                    )
                    for i in range(len(names))
                ]
                return verdicts, text
        described = ", ".join(f"{i + 1} {names[i]!r}" for i in missing)
        expected = (
            f"<analysis> and <score> lists of {len(names)} entries each (the official format)"
            if self.protocol is not None
            else 'a JSON object such as {"1": {"verdict": "yes", "reason": "..."}} with one entry per test point'
        )
        raise UnparseableJudgment(
            f"UniGenBench judge {self.endpoint}: image {os.fspath(image_path)} (prompt {prompt.index}) got no verdict for test point(s) "
            f"{described} in {1 + self.parse_retries} answers; last answer: {(problem or text)[-400:]!r}. Expected {expected}",
            image=name,
            missing=[names[i] for i in missing],
            answer=text,
        )

    def check_server(self) -> list[str] | None:
        """The served model names; fails before any image is drawn when the judge cannot answer."""
        return check_chat_server(self.session, self.base_url, self.model, "UniGenBench judge", self.headers)

    def read(self, text: str, names: list[str]) -> dict[int, tuple[bool, str]]:
        """{position: (correct, reason)} of the test points an answer gives verdicts for."""
        if self.protocol is None:
            return parse_answer(text, names)
        parsed = parse_official(text, len(names))
        return dict(enumerate(parsed)) if parsed is not None else {}

    def _count_usage(self, response: requests.Response) -> None:
        """Add an answer's token usage (OpenAI's `usage` field, when the server sends one)."""
        try:
            usage = response.json().get("usage") or {}
        except (ValueError, AttributeError):
            usage = {}
        with self._pace:
            self.usage["requests"] += 1
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    self.usage[key] += usage[key]

    def _post(self, body: dict, name: str) -> requests.Response:
        """One judge request with rewards.http's retries; failures raise RewardServiceError naming the URL."""
        if self.interval:  # --requests-per-minute: request starts at least `interval` apart
            with self._pace:
                start = max(time.monotonic(), self._next_start)
                self._next_start = start + self.interval
            time.sleep(max(0.0, start - time.monotonic()))
        return post_with_retries(
            self.session,
            self.endpoint,
            what=f"UniGenBench judge (image {name})",
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            headers=self.headers,
            json=body,
        )

    def judge_all(
        self,
        images_and_prompts: Iterable[tuple[str | os.PathLike, BenchPrompt]],
        store: JudgmentStore,
        progress: bool = True,
    ) -> dict:
        """Judge the images the store lacks, `concurrency` at a time, recording each as soon as it
        is judged. Returns {"total", "judged", "skipped" (already in the store), "failed": {image
        name: error}}; failed images are also summarised in a RuntimeWarning and are simply judged
        by the next call with the same store."""
        items = [(Path(path), prompt) for path, prompt in images_and_prompts]
        _check_items(items)
        done = store.done_images()
        todo = [(path, prompt) for path, prompt in items if path.name not in done]
        failed: dict[str, str] = {}
        judged = 0
        bar = tqdm(total=len(todo), desc="UniGenBench judge", unit="image", disable=not progress)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(todo))))
        try:
            futures = {pool.submit(self._judge_and_record, path, prompt, store): path.name for path, prompt in todo}
            for future in as_completed(futures):
                error = future.exception()
                if error is None:
                    judged += 1
                else:
                    failed[futures[future]] = f"{type(error).__name__}: {error}"
                bar.update(1)
                bar.set_postfix(failed=len(failed), refresh=False)
        finally:
            pool.shutdown(
                wait=True, cancel_futures=True
            )  # on Ctrl-C: drop queued images, finish (and record) those in flight
            bar.close()
        if failed:
            first = next(iter(failed.items()))
            warnings.warn(
                f"UniGenBench judge {self.endpoint}: {len(failed)} of {len(todo)} images failed and are not in {store.path}; "
                f"call judge_all again with the same store to judge only those. First: {first[0]}: {first[1]}",
                RuntimeWarning,
                stacklevel=2,
            )
        return {"total": len(items), "judged": judged, "skipped": len(items) - len(todo), "failed": failed}

    def _judge_and_record(self, path: Path, prompt: BenchPrompt, store: JudgmentStore) -> None:
        """Judge one image and record it in the store (one transaction)."""
        verdicts, raw = self.judge_image(path, prompt)
        store.record(path.name, prompt.index, verdicts, model=self.model, raw=raw)


# ---------------------------------------------------------------------------------------------

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def image_data_url(path: str | os.PathLike) -> str:
    """The image file's bytes, unchanged, as a base64 data URL (PNG, JPEG or WEBP)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"UniGenBench judge: cannot read image {os.fspath(path)}: {error}") from None
    mime = next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise ValueError(
            f"UniGenBench judge: {os.fspath(path)} is not a PNG, JPEG or WEBP image (starts with {data[:8]!r})"
        )
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _check_items(items: list[tuple[Path, BenchPrompt]]) -> None:
    """Reject duplicate image names and images whose name says another prompt index."""
    seen: set[str] = set()
    for path, prompt in items:
        if not isinstance(prompt, BenchPrompt):
            raise TypeError(
                f"judge_all: expected (image path, BenchPrompt) pairs, got ({path}, {type(prompt).__name__})"
            )
        if path.name in seen:
            raise ValueError(
                f"judge_all: image name {path.name!r} appears twice; the store keys judgments by file name"
            )
        seen.add(path.name)
        match = IMAGE_NAME.match(path.name)
        if match and int(match.group("index")) != prompt.index:
            raise ValueError(
                f"judge_all: image {path} is named for prompt {match.group('index')} but paired with prompt {prompt.index}"
            )


def _check_options(
    *,
    model: object,
    concurrency: object,
    timeout: object,
    retries: object,
    backoff: object,
    temperature: object,
    max_tokens: object,
    parse_retries: object,
    instruction: object,
) -> None:
    if not isinstance(model, str) or not model:
        raise ValueError(
            f"UniGenBench judge model must be the served model name, such as 'QwenVL' or {DEFAULT_MODEL!r}, got {model!r}"
        )
    check_client_numbers(
        "UniGenBench judge",
        {
            "concurrency": (concurrency, 1),
            "retries": (retries, 0),
            "parse_retries": (parse_retries, 0),
            "max_tokens": (1 if max_tokens is None else max_tokens, 1),
        },
        {"timeout": (timeout, True), "backoff": (backoff, False), "temperature": (temperature, False)},
    )
    try:
        if not isinstance(instruction, str) or "{prompt}" not in instruction or "{testpoints}" not in instruction:
            raise ValueError
        instruction.format(prompt="", testpoints="", count=0)
    except (ValueError, KeyError, IndexError):
        raise ValueError(
            "UniGenBench judge instruction must be a str.format template with {prompt} and {testpoints} fields "
            f"(and optionally {{count}}; other braces doubled), got {instruction!r:.120}"
        ) from None
