"""A pairwise reward from a vision-language judge served behind an OpenAI-compatible chat API.

`VLMJudge(...).compare(images_a, images_b, prompts)` asks the judge, for each pair, which of the
two images better matches its prompt, and returns the probability that a is preferred: 1, 0, or
0.5 for a tie. This is how Pref-GRPO (arXiv 2508.20751) rewards with UnifiedReward-Think, served
for example with

    vllm serve CodeGoat24/UnifiedReward-Think-qwen-7b --limit-mm-per-prompt.image 2 --port 8000

and it works the same with SGLang or a hosted model. Each pair is one POST to
{base_url}/chat/completions carrying both images as base64 data URLs and our judging prompt;
`concurrency` requests run at a time, each retried on connection errors, timeouts, 429 and 5xx
(rewards.http). `both_orders=True` judges (a, b) and (b, a) and averages, which cancels a judge's
preference for one position. An answer with no readable verdict (parse_verdict) is recorded as
a tie and counted in `failures`, or fails with `on_unparseable="error"`.

One requests.Session is shared by the worker threads: its connection pool (urllib3) is
thread-safe, and the only shared mutable state it has besides, the cookie jar, is not used by
these API calls.
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import warnings
from collections.abc import Sequence

import torch

from .base import InvalidRewardError, check_images, to_uint8
from .http import (
    chat_answer_text,
    check_chat_server,
    check_client_numbers,
    check_url,
    map_in_threads,
    pooled_session,
    post_with_retries,
    request_headers,
    warn_token_in_clear,
)
from .judge_protocols import SERVED_MODEL, JudgeProtocol, parse_pref_grpo

URL_ENV = "FLOWRL_JUDGE_URL"
DEFAULT_URL = "http://127.0.0.1:8000/v1"
# The checkpoint of UnifiedReward-Think (Qwen2.5-VL-7B) as used by Pref-GRPO. A server started with
# --served-model-name (Pref-GRPO's scripts use "UnifiedReward") must be called with that name.
DEFAULT_MODEL = "CodeGoat24/UnifiedReward-Think-qwen-7b"
UNPARSEABLE_POLICIES = ("tie", "error")
IMAGE_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}

# Our judging prompt. The images come first in the message (Image 1, then Image 2), as the
# UnifiedReward models were trained; the verdict format is the one those models answer in.
DEFAULT_INSTRUCTION = """You are comparing two images that a text-to-image model generated for the same prompt. The first image above is Image 1 and the second is Image 2.

Prompt: "{prompt}"

Judge which image is better on two criteria, the first weighing more than the second:
1. Alignment: does the image show everything the prompt asks for - the objects, their number, attributes, positions and relations, and any requested text or style - and nothing that contradicts it?
2. Quality: is it sharp, coherent and free of artifacts such as distorted anatomy, broken objects or garbled text, with a pleasing composition?

Think it through briefly inside <think> </think>. Then give the final verdict inside <answer> </answer>, containing exactly one of: Image 1 is better / Image 2 is better. Answer "Tie" only if you genuinely cannot tell them apart."""


class UnparseableVerdictError(InvalidRewardError):
    """The judge answered, but no verdict could be read from the answer."""


# ---------------------------------------------------------------------------------------------
# Reading a verdict. A side is named as "Image 1"/"Image 2", "Image A"/"Image B", "the first
# (image|one)"/"the second ...", or after a keyword ("Answer: 2", "Verdict: B"); bare letters
# A/B count only in capitals, since "a" is also an article.

_SIDES = {"1": 1.0, "a": 1.0, "first": 1.0, "2": 0.0, "b": 0.0, "second": 0.0}
_SUBJECT = (
    r"(?:(?:image|picture|img|option|candidate)\s*[#-]?\s*(?P<label>[12ab])\b"
    r"|(?:the\s+)?(?P<ordinal>first|second)\b(?:\s+(?:image|picture|one|option|candidate)\b)?)"
)
# after a keyword: also a bare digit or capital letter, when no word follows it ("answer is 2 cats" is not a verdict)
_TARGET = rf"(?:{_SUBJECT}|(?P<digit>[12])(?!\.?\d|\s*\w)|(?-i:(?P<letter>[AB]))(?!\s*\w))"
_COPULA = r"(?:is|was|looks|seems|appears|comes\s+out|would\s+be)"
_FILLER = r"(?:(?!not\b|no\b|less\b|never\b|hardly\b)\w+,?\s+){0,2}?"  # "is clearly the better", never "is not better"
_KEYWORD = r"\b(?:final\s+)?(?:answer|verdict|decision|choice|conclusion|winner|judge?ment|(?:better|preferred|best)\s+(?:image|one))"
_SEPARATOR = r"\s*(?:is\s*|[:=\-\u2013\u2014]\s*)?"

# (pattern, True when it names the preferred side, False when it names the worse one)
_SIDE_PATTERNS = [
    (
        re.compile(
            rf"{_SUBJECT}\s+(?:{_COPULA}\s+{_FILLER})?(?:better|preferred|preferable|superior|stronger|the\s+winner|wins)\b",
            re.I,
        ),
        True,
    ),
    (re.compile(rf"{_SUBJECT}\s+{_COPULA}\s+{_FILLER}(?:worse|inferior|weaker|the\s+loser)\b", re.I), False),
    (
        re.compile(
            r"(?-i:\b(?P<letter>[AB]))\s+(?:is\s+(?:(?:clearly|slightly|much|the)\s+)*(?:better|preferred|superior|the\s+winner)|wins)\b",
            re.I,
        ),
        True,
    ),
    (
        re.compile(
            rf"\b(?:prefer|preferring|choose|choosing|chose|pick|picking|select|selecting|favou?r|go\s+with|recommend)\s+(?:the\s+)?{_TARGET}",
            re.I,
        ),
        True,
    ),
    (re.compile(rf"{_KEYWORD}{_SEPARATOR}(?:that\s+)?(?:the\s+)?{_TARGET}", re.I), True),
]
_TIE_PATTERNS = [
    re.compile(
        r"\b(?:it'?s|it\s+is|is|as|call\s+it|ends\s+in)\s+a\s+tie\b|\bequally\s+(?:good|bad|well|strong|matched|aligned|preferable|acceptable|poor)\b"
        r"|\bboth\s+(?:images\s+)?(?:are\s+)?(?:equally|equal|the\s+same)\b|\bneither\s+(?:image\s+|one\s+)?is\s+(?:clearly\s+)?better\b"
        r"|\bno\s+(?:clear\s+)?(?:preference|winner)\b",
        re.I,
    ),
    re.compile(rf"{_KEYWORD}{_SEPARATOR}(?:a\s+)?(?:tie|draw|equal|neither|none|both|same)\b", re.I),
]
# a whole answer that is only a side or a tie ("2", "Image B", "the first one", "Tie")
_ANSWER_PREFIX = re.compile(rf"^(?:{_KEYWORD}){_SEPARATOR}", re.I)
_SHORT_SIDE = re.compile(
    r"(?:the\s+)?(?:(?:image|picture|option)\s*[#-]?\s*)?(?P<label>[12ab])|(?:the\s+)?(?P<ordinal>first|second)(?:\s+(?:image|picture|one))?",
    re.I,
)
_SHORT_TIE = re.compile(
    r"(?:a\s+)?(?:tie|draw|equal|equally\s+good|equally\s+bad|the\s+same|same|both|neither|none|no\s+preference)", re.I
)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.I | re.S)


def _side(match: re.Match) -> float:
    """1.0 when the matched text names image 1 (a, first), 0.0 for image 2."""
    groups = match.groupdict()
    for key in ("label", "ordinal", "digit", "letter"):
        if groups.get(key):
            return _SIDES[groups[key].lower()]
    raise AssertionError(f"no side in {match.group(0)!r}")  # every pattern names one


def _plain(text: str) -> str:
    """The text without markdown emphasis or typographic quotes, whitespace collapsed."""
    text = re.sub(r"[*`]|__|^\s*[#>]+", "", text, flags=re.M)
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    return re.sub(r"\s+", " ", text).strip()


def _read(text: str) -> float | None:
    """The verdict in one piece of text: a short answer, else the last explicit verdict in it."""
    text = _plain(text)
    short = _ANSWER_PREFIX.sub("", text).strip(" .!,;:'\"()[]")
    if match := _SHORT_SIDE.fullmatch(short):
        return _side(match)
    if _SHORT_TIE.fullmatch(short):
        return 0.5
    found: list[tuple[int, int, float]] = []  # (end, -start, value): the verdict that ends last wins
    for pattern, preferred in _SIDE_PATTERNS:
        for match in pattern.finditer(text):
            side = _side(match)
            found.append((match.end(), -match.start(), side if preferred else 1.0 - side))
    for pattern in _TIE_PATTERNS:
        found.extend((match.end(), -match.start(), 0.5) for match in pattern.finditer(text))
    return max(found)[2] if found else None


def parse_verdict(text: str) -> float | None:
    """1.0 if the judge's answer prefers image 1, 0.0 for image 2, 0.5 for a tie, None if unreadable.

    The last <answer>...</answer> block decides when there is one (an unclosed final <answer> is
    read to the end of the text). Otherwise the whole answer is read, unless it stops inside an
    unclosed <think> block (cut off before any verdict). Within the text read, a bare verdict
    ("2", "Image B", "the first one", "Tie") is taken as is; otherwise the explicit verdict that
    comes last wins ("Image 1 is better ...; overall Image 2 is better" is 0.0). Case and markdown
    emphasis are ignored."""
    if not isinstance(text, str):
        return None
    blocks = _ANSWER_BLOCK.findall(text)
    tail = text.rsplit("</answer>", 1)[-1] if blocks else text
    opened = tail.lower().rfind("<answer>")
    if opened >= 0:
        return _read(tail[opened + len("<answer>") :])
    if blocks:
        return _read(blocks[-1])
    lowered = text.lower()
    if lowered.rfind("<think>") > lowered.rfind("</think>"):
        return None
    return _read(text)


# ---------------------------------------------------------------------------------------------


class VLMJudge:
    """compare(images_a, images_b, prompts) -> Tensor[B]: the probability that a is preferred, as
    judged by a VLM behind an OpenAI-compatible chat completions API (UnifiedReward-Think by default)."""

    name = "vlm_judge"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        both_orders: bool = False,
        temperature: float = 0.0,
        max_tokens: int | None = 4096,
        on_unparseable: str = "tie",
        image_format: str | None = None,
        instruction: str | None = None,
        protocol: str = "flowrl",
    ) -> None:
        """base_url: the API root (…/v1), from $FLOWRL_JUDGE_URL when not given, else
        http://127.0.0.1:8000/v1; model: the served model name; api_key_env: the environment
        variable holding the key sent as a Bearer token (none set: no header); concurrency:
        requests in flight at once; timeout, retries, backoff: per request, as rewards.http;
        both_orders: judge (a, b) and (b, a) and average; temperature, max_tokens: sampling
        (max_tokens=None leaves it to the server); on_unparseable: "tie" records an unreadable
        answer as 0.5 and counts it in `failures`, "error" raises; image_format: png, jpeg or
        webp; instruction: the judging prompt, with {prompt} where the image prompt goes;
        protocol: flowrl (our prompt and lenient parsing), or a named preset (pref_grpo,
        pref_grpo_v1, unifiedreward_think: rewards.judge_protocols) that fixes the template, JPEG images, the request
        fields (model UnifiedReward, no temperature) and Pref-GRPO's answer rule."""
        self.protocol = JudgeProtocol.load(protocol) if protocol != "flowrl" else None
        if self.protocol is not None:
            if instruction is not None or image_format not in (None, "jpeg"):
                raise ValueError(f"vlm_judge protocol={protocol!r} fixes the instruction and the image format")
            model = model if model is not None else SERVED_MODEL
            max_tokens = self.protocol.max_tokens
        model = model if model is not None else DEFAULT_MODEL
        image_format = image_format or ("jpeg" if self.protocol is not None else "png")
        instruction = instruction or (self.protocol.template if self.protocol is not None else DEFAULT_INSTRUCTION)
        self.base_url = check_url(
            base_url if base_url is not None else os.environ.get(URL_ENV) or DEFAULT_URL,
            "vlm_judge base_url",
            DEFAULT_URL,
        )
        self.endpoint = (
            self.base_url if self.base_url.endswith("/chat/completions") else self.base_url + "/chat/completions"
        )
        _check_options(
            model=model,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            temperature=temperature,
            max_tokens=max_tokens,
            on_unparseable=on_unparseable,
            image_format=image_format,
            instruction=instruction,
        )
        self.model = model
        self.concurrency, self.timeout, self.retries, self.backoff = (
            concurrency,
            float(timeout),
            retries,
            float(backoff),
        )
        self.both_orders = bool(both_orders)
        # a preset sends no temperature (the server's default), as the project it reproduces
        self.temperature = None if self.protocol is not None else float(temperature)
        self.max_tokens = max_tokens
        self.on_unparseable = on_unparseable
        self.image_format = image_format.lower()
        self.instruction = instruction
        self.api_key_env = api_key_env
        self.headers = warn_token_in_clear(self.base_url, request_headers("application/json", api_key_env))
        self.session = pooled_session(concurrency)
        # the judge must answer before any rollout is scored (nothing listening, a wrong model name)
        check_chat_server(self.session, self.base_url, self.model, f"reward {self.name!r}", self.headers)
        self.failures = 0  # answers with no readable verdict (recorded as ties), over this object's life
        self.judged = 0  # answers received (one per pair, two with both_orders), over this object's life
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLMJudge({self.model!r} at {self.base_url!r}, both_orders={self.both_orders})"

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B] on the CPU: per pair, 1 if the judge prefers a, 0 if b, 0.5 for a tie or an
        unreadable answer (the mean of both orders with both_orders)."""
        prompts = list(prompts)
        check_images(images_a, prompts, self.name)
        check_images(images_b, prompts, self.name)
        if images_a.shape != images_b.shape:
            raise ValueError(
                f"reward {self.name!r}: images_a {tuple(images_a.shape)} and images_b {tuple(images_b.shape)} must have the same shape"
            )
        count = len(prompts)
        if count == 0:
            return torch.zeros(0, dtype=torch.float32)
        pixels = to_uint8(torch.cat([images_a, images_b]))  # [2B, H, W, 3]: a then b
        urls = map_in_threads(self._data_url, list(pixels), self.concurrency)
        jobs = [(i, False) for i in range(count)] + ([(i, True) for i in range(count)] if self.both_orders else [])
        results = map_in_threads(
            lambda job: self._judge(job[1], urls[job[0]], urls[count + job[0]], prompts[job[0]]), jobs, self.concurrency
        )
        failed = [(job, problem) for job, (_, problem) in zip(jobs, results) if problem is not None]
        with self._lock:
            self.judged += len(jobs)
            self.failures += len(failed)
        if failed:
            described = "; ".join(
                f"pair {i} {'(b, a)' if swapped else '(a, b)'}: {problem}" for (i, swapped), problem in failed[:3]
            )
            if self.on_unparseable == "error":
                raise UnparseableVerdictError(
                    f"reward {self.name!r}: {len(failed)} of {len(jobs)} answers from {self.endpoint} had no verdict; {described}. "
                    f"Expected an answer ending in <answer>Image 1 is better</answer> or <answer>Image 2 is better</answer> "
                    f"(or set on_unparseable='tie' to record them as ties)"
                )
            warnings.warn(
                f"reward {self.name!r}: {len(failed)} of {len(jobs)} answers from {self.endpoint} had no verdict and count as ties "
                f"({self.failures} so far); {described}",
                RuntimeWarning,
                stacklevel=2,
            )
        verdicts = [verdict for verdict, _ in results]
        prob_a = torch.tensor(verdicts[:count], dtype=torch.float64)
        if self.both_orders:
            prob_a = (
                prob_a + 1.0 - torch.tensor(verdicts[count:], dtype=torch.float64)
            ) / 2  # the second half was judged b first
        return prob_a.float()

    def _data_url(self, pixels) -> str:
        """An [H, W, 3] uint8 image as a data URL in the chosen format."""
        from PIL import Image

        pil_format, mime = IMAGE_FORMATS[self.image_format]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(
            buffer, format=pil_format, **({"quality": 95} if pil_format in ("JPEG", "WEBP") else {})
        )
        return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"

    def request_body(self, first_url: str, second_url: str, prompt: str) -> dict:
        """The chat completions request judging one ordered pair (first_url shown as Image 1)."""
        content = [
            {"type": "image_url", "image_url": {"url": first_url}},
            {"type": "image_url", "image_url": {"url": second_url}},
            {"type": "text", "text": self.instruction.format(prompt=prompt)},
        ]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.protocol is not None and self.protocol.do_sample is not None:
            body["do_sample"] = self.protocol.do_sample
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def _judge(self, swapped: bool, url_a: str, url_b: str, prompt: str) -> tuple[float, str | None]:
        """(P(the first image shown is preferred), None) for one pair, shown as (b, a) when
        swapped; (0.5, what went wrong) when the answer has no verdict."""
        first, second = (url_b, url_a) if swapped else (url_a, url_b)
        response = post_with_retries(
            self.session,
            self.endpoint,
            what=f"reward {self.name!r}",
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            headers=self.headers,
            json=self.request_body(first, second, prompt),
        )
        text, finish, problem = chat_answer_text(response)
        read = parse_pref_grpo if self.protocol is not None else parse_verdict
        verdict = read(text) if problem is None else None
        if verdict is not None:
            return verdict, None
        if problem is None:
            problem = f"no verdict in the answer {text[-300:]!r}"
            if finish == "length":
                problem += f" (cut off at max_tokens={self.max_tokens}; raise it)"
        return 0.5, problem


def _check_options(
    *,
    model: object,
    concurrency: object,
    timeout: object,
    retries: object,
    backoff: object,
    temperature: object,
    max_tokens: object,
    on_unparseable: object,
    image_format: object,
    instruction: object,
) -> None:
    if not isinstance(model, str) or not model:
        raise ValueError(f"vlm_judge model must be the served model name, such as {DEFAULT_MODEL!r}, got {model!r}")
    if on_unparseable not in UNPARSEABLE_POLICIES:
        raise ValueError(f"vlm_judge on_unparseable must be one of {UNPARSEABLE_POLICIES}, got {on_unparseable!r}")
    if not isinstance(image_format, str) or image_format.lower() not in IMAGE_FORMATS:
        raise ValueError(f"vlm_judge image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    check_client_numbers(
        "vlm_judge",
        {
            "concurrency": (concurrency, 1),
            "retries": (retries, 0),
            "max_tokens": (1 if max_tokens is None else max_tokens, 1),
        },
        {"timeout": (timeout, True), "backoff": (backoff, False), "temperature": (temperature, False)},
    )
    try:
        if not isinstance(instruction, str) or "{prompt}" not in instruction:
            raise ValueError
        instruction.format(prompt="")
    except (ValueError, KeyError, IndexError):
        raise ValueError(
            f"vlm_judge instruction must be a str.format template with a {{prompt}} field (braces doubled elsewhere), got {instruction!r:.120}"
        ) from None
