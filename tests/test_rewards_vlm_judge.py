"""The VLM judge (rewards.vlm_judge) against real `tests/judge_server.py` processes on loopback.

The stand-in judge prefers the brighter image and answers like UnifiedReward-Think, so every
probability is known in advance; its modes make it fail in the ways a served model does. The
client is used as shipped: nothing is patched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from openai_stub import server_fixture

from flowrl.rewards.base import InvalidRewardError, is_pairwise
from flowrl.rewards.http import RewardServiceError
from flowrl.rewards.registry import load
from flowrl.rewards.vlm_judge import DEFAULT_URL, UnparseableVerdictError, VLMJudge, parse_verdict

SERVER = Path(__file__).resolve().parent / "judge_server.py"
KEY_ENV = "FLOWRL_TEST_JUDGE_KEY"


start_server = server_fixture(SERVER)  # start_server(*args) -> a running StubServer, stopped afterwards


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    """Tests choose their own key and URL; the caller's environment must not leak in."""
    for name in ("OPENAI_API_KEY", KEY_ENV, "FLOWRL_JUDGE_URL"):
        monkeypatch.delenv(name, raising=False)


def grey(*levels: float, size: int = 8) -> torch.Tensor:
    """[len(levels), 3, size, size] images, each of one grey level in [0, 1]."""
    return torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


def fast(url: str, **options) -> VLMJudge:
    """A judge with test-sized timeouts and backoff."""
    return VLMJudge(base_url=url, **{"timeout": 5.0, "retries": 2, "backoff": 0.01, "concurrency": 4, **options})


# --- parse_verdict --------------------------------------------------------------------------

PARSE_CASES = [
    # UnifiedReward-Think's format: the <answer> block decides, whatever the reasoning says
    ("<think>Image 2 is better in colour, but ...</think>\n<answer>Image 1 is better</answer>", 1.0),
    ("<think>Total: Image 1: 31, Image 2: 33</think><answer>Image 2 is better</answer>", 0.0),
    ("<answer> image 2 is better. </answer>", 0.0),
    ("<ANSWER>**Image 1 is better**</ANSWER>", 1.0),
    ("<answer>Image 1 is better</answer> ... <answer>Image 2 is better</answer>", 0.0),  # the last block
    ("<think>done</think><answer>Image 1 is better", 1.0),  # unclosed final answer, cut off after the verdict
    ("<think>So far Image 1 is better, and", None),  # cut off inside the reasoning: no verdict yet
    ("<answer>I am not sure</answer> Image 1 is better", None),  # the answer block decides
    ("<answer></answer>", None),
    # free text: the last explicit verdict wins
    ("Image 1 is better in alignment, but overall Image 2 is better.", 0.0),
    ("Image 1 is better than Image 2.", 1.0),
    ("Image 2 is worse than Image 1.", 1.0),
    ("Image 2 is better. Image 1 is less preferred.", 0.0),
    ("Based on the total scores, Image 2 is the winner.", 0.0),
    ("IMAGE 2 IS BETTER", 0.0),
    ("image1 is better", 1.0),
    ("Image A is clearly the better match for the prompt.", 1.0),
    ("A is better", 1.0),
    ("The first image is better.", 1.0),
    ("Overall, the second one wins.", 0.0),
    ("I prefer the second one.", 0.0),
    ("I would choose Image 1.", 1.0),
    ("**Final verdict:** Image B", 0.0),
    ("Verdict: A", 1.0),
    ("Answer: 2", 0.0),
    ("Final answer - **Image 1**", 1.0),
    # bare answers
    ("2", 0.0),
    ("answer: b", 0.0),
    ("Image 1", 1.0),
    ("First.", 1.0),
    ("the second image", 0.0),
    # ties
    ("Tie", 0.5),
    ("<answer>Both images are equally good.</answer>", 0.5),
    ("Neither image is better.", 0.5),
    ("It's a tie.", 0.5),
    ("Final answer: equal", 0.5),
    ("Image 1 is better for colour, but in the end it is a tie.", 0.5),
    # no verdict
    ("", None),
    ("I cannot decide.", None),
    ("Image 1 shows a man in a tie; Image 2 shows a dog.", None),
    ("Image 1: 8/10, Image 2: 6/10", None),
    ("Image 1 is not better than Image 2", None),
    ("The answer is 2 cats.", None),
    ("a is better", None),  # a lowercase bare "a" is an article, not image A
    ("Image 10 is better", None),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_parse_verdict_rejects_non_text():
    assert parse_verdict(None) is None  # type: ignore[arg-type]


# --- against the stand-in server -----------------------------------------------------------


def test_brighter_image_is_preferred_in_either_position(start_server):
    server = start_server()
    judge = fast(server.url, model="test-judge", max_tokens=64)
    assert is_pairwise(judge) and judge.name == "vlm_judge"
    prompts = ["a cat", "a dog", "a {curly} prompt", "same"]
    result = judge.compare(grey(0.9, 0.1, 0.6, 0.5), grey(0.2, 0.8, 0.4, 0.5), prompts)
    assert result.dtype == torch.float32 and result.device.type == "cpu" and result.shape == (4,)
    assert result.tolist() == [1.0, 0.0, 1.0, 0.5]
    assert judge.failures == 0 and judge.judged == 4
    stats = server.stats()
    assert stats["requests"] == 4
    last = stats["last"]
    assert last["model"] == "test-judge" and last["temperature"] == 0.0 and last["max_tokens"] == 64
    assert last["mimes"] == ["image/png", "image/png"]
    assert "<answer>" in last["prompt"]
    assert sorted(text.split('Prompt: "')[1].split('"\n')[0] for text in stats["prompts"]) == sorted(
        prompts
    )  # braces kept as is


def test_jpeg_images_and_the_registry(start_server):
    server = start_server()
    judge = load("vlm_judge", base_url=server.url, image_format="jpeg", timeout=5.0)
    assert isinstance(judge, VLMJudge) and is_pairwise(judge)
    assert judge.compare(grey(0.3, 0.7), grey(0.6, 0.2), ["x", "y"]).tolist() == [0.0, 1.0]
    assert server.stats()["last"]["mimes"] == ["image/jpeg", "image/jpeg"]


def test_both_orders_cancels_position_bias(start_server):
    server = start_server("--position-bias")  # equal images: always "Image 1 is better"
    images_a, images_b, prompts = grey(0.5, 0.9, 0.1), grey(0.5, 0.2, 0.7), ["p0", "p1", "p2"]
    assert fast(server.url).compare(images_a, images_b, prompts).tolist() == [1.0, 1.0, 0.0]  # biased on the tie
    both = fast(server.url, both_orders=True)
    assert both.compare(images_a, images_b, prompts).tolist() == [0.5, 1.0, 0.0]
    assert both.judged == 6 and server.stats()["requests"] == 3 + 6


def test_requests_run_concurrently_and_results_stay_in_order(start_server):
    server = start_server("--delay", "0.2")
    levels_a = [0.1 * k for k in range(1, 9)]
    levels_b = [0.45] * 8
    result = fast(server.url, concurrency=4).compare(grey(*levels_a), grey(*levels_b), [f"p{k}" for k in range(8)])
    assert result.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    stats = server.stats()
    assert stats["requests"] == 8 and 1 < stats["max_in_flight"] <= 4  # several requests in flight at once


def test_one_at_a_time_with_concurrency_1(start_server):
    server = start_server("--delay", "0.05")
    fast(server.url, concurrency=1).compare(grey(0.1, 0.2, 0.3), grey(0.9, 0.8, 0.7), ["a", "b", "c"])
    assert server.stats()["max_in_flight"] == 1


def test_retries_after_503_and_dropped_connections(start_server):
    server = start_server("--mode", "flaky", "--fail-first", "3")  # 503, hang-up, 503, then answers
    judge = fast(server.url, retries=3, concurrency=2)
    assert judge.compare(grey(0.9, 0.1), grey(0.1, 0.9), ["a", "b"]).tolist() == [1.0, 0.0]
    assert server.stats()["requests"] == 2 + 3


def test_gives_up_after_retries_naming_the_url(start_server):
    server = start_server("--mode", "flaky", "--fail-first", "1000")
    judge = fast(server.url, retries=2, concurrency=1)
    with pytest.raises(RewardServiceError, match="failed after 3 attempts") as error:
        judge.compare(grey(0.9), grey(0.1), ["a"])
    assert server.url + "/chat/completions" in str(error.value) and "vlm_judge" in str(error.value)
    assert server.stats()["requests"] == 3


def test_a_timeout_is_retried(start_server):
    server = start_server("--mode", "slow", "--slow-count", "1", "--slow-seconds", "5")
    result = fast(server.url, timeout=0.5, retries=2, concurrency=1).compare(grey(0.2), grey(0.8), ["a"])
    assert result.tolist() == [0.0]
    assert server.stats()["requests"] == 2  # the slow request was abandoned at the timeout and asked again


def test_a_killed_server_fails_clearly(start_server):
    server = start_server("--mode", "die", "--die-at", "2")
    judge = fast(server.url, timeout=2.0, retries=2, backoff=0.05, concurrency=1)
    with pytest.raises(RewardServiceError, match="failed after 3 attempts") as error:
        judge.compare(grey(0.9, 0.8, 0.7), grey(0.1, 0.2, 0.3), ["a", "b", "c"])
    assert server.url + "/chat/completions" in str(error.value)
    assert "nothing is listening there (connection refused)" in str(error.value)
    assert server.proc.wait(timeout=5) == 3  # it really exited mid-request


def test_malformed_answers_are_ties_and_counted(start_server):
    server = start_server("--mode", "malformed")
    judge = fast(server.url)
    prompts = ["good one", "no verdict here", "json broken", "good two"]
    with pytest.warns(RuntimeWarning, match=r"2 of 4 answers .* no verdict.*pair 1 \(a, b\)"):
        result = judge.compare(grey(0.9, 0.9, 0.9, 0.1), grey(0.1, 0.1, 0.1, 0.9), prompts)
    assert result.tolist() == [1.0, 0.5, 0.5, 0.0]
    assert judge.failures == 2 and judge.judged == 4
    with pytest.warns(RuntimeWarning, match=r"\(4 so far\)"):
        judge.compare(grey(0.9, 0.9), grey(0.1, 0.1), ["json", "none"])
    assert judge.failures == 4


def test_malformed_answers_can_be_errors_naming_the_pair(start_server):
    server = start_server("--mode", "malformed")
    judge = fast(server.url, on_unparseable="error")
    with pytest.raises(UnparseableVerdictError, match=r"pair 2 \(a, b\): expected a chat completion") as error:
        judge.compare(grey(0.9, 0.9, 0.9), grey(0.1, 0.1, 0.1), ["good", "good", "json"])
    assert isinstance(error.value, InvalidRewardError) and "on_unparseable='tie'" in str(error.value)
    both = fast(server.url, on_unparseable="error", both_orders=True)
    with pytest.raises(
        UnparseableVerdictError, match=r"2 of 2 answers.*pair 0 \(a, b\): no verdict in the answer.*pair 0 \(b, a\)"
    ):
        both.compare(grey(0.9), grey(0.1), ["none"])
    assert both.failures == 2


def test_the_api_key_comes_from_the_environment(start_server, monkeypatch):
    server = start_server("--api-key", "right-key")
    monkeypatch.setenv(KEY_ENV, "right-key")
    assert fast(server.url, api_key_env=KEY_ENV).compare(grey(0.9), grey(0.1), ["a"]).tolist() == [1.0]

    monkeypatch.setenv(KEY_ENV, "wrong-key")
    with pytest.raises(RewardServiceError, match="refused the request with HTTP 401.*Incorrect API key") as error:
        fast(server.url, api_key_env=KEY_ENV, retries=3, backoff=1.0).compare(grey(0.9), grey(0.1), ["a"])
    assert server.url in str(error.value)
    assert server.stats()["unauthorized"] == 1  # a 401 fails at once: one request, no retries

    monkeypatch.delenv(KEY_ENV)  # no key: no Authorization header at all
    with pytest.raises(RewardServiceError, match="HTTP 401"):
        fast(server.url, api_key_env=KEY_ENV).compare(grey(0.9), grey(0.1), ["a"])
    assert server.stats()["unauthorized"] == 2


def test_default_key_variable_and_url(monkeypatch):
    from flowrl.rewards import vlm_judge

    monkeypatch.setattr(vlm_judge, "check_chat_server", lambda *args: None)  # no server: only settings here
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = VLMJudge()
    assert judge.base_url == DEFAULT_URL and judge.headers["Authorization"] == "Bearer sk-test"
    monkeypatch.setenv("FLOWRL_JUDGE_URL", "http://judge.example:9000/v1/")
    monkeypatch.delenv("FLOWRL_ALLOW_PLAIN_HTTP_TOKEN", raising=False)
    with pytest.warns(UserWarning, match="not sending the API key over plain http to judge.example"):
        judge = VLMJudge()
    assert judge.endpoint == "http://judge.example:9000/v1/chat/completions" and "Authorization" not in judge.headers
    assert "Authorization" not in VLMJudge(api_key_env=None).headers


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(base_url="localhost:8000"), "base_url 'localhost:8000'"),
        (dict(concurrency=0), "concurrency must be an integer >= 1, got 0"),
        (dict(retries=-1), "retries must be an integer >= 0"),
        (dict(timeout=0), "timeout must be a positive number"),
        (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
        (dict(on_unparseable="skip"), "on_unparseable must be one of"),
        (dict(image_format="gif"), "image_format must be one of"),
        (dict(instruction="Which is better?"), r"\{prompt\} field"),
    ],
)
def test_bad_options_fail_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        VLMJudge(**options)


def test_bad_batches_fail_before_any_request(start_server):
    server = start_server()
    judge = VLMJudge(base_url=server.url, model="test-judge", retries=0, timeout=1.0)
    with pytest.raises(ValueError, match="must have the same shape"):
        judge.compare(grey(0.1, 0.2), grey(0.1, 0.2, size=4), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        judge.compare(grey(0.1, 0.2), grey(0.1, 0.2), ["a"])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        judge.compare(grey(0.5) * 3, grey(0.1), ["a"])
    assert judge.compare(grey(0.1)[:0], grey(0.1)[:0], []).shape == (0,)
    assert server.stats()["requests"] == 0  # no judging request was sent


def test_a_judge_that_cannot_answer_fails_when_the_reward_is_built(start_server):
    with pytest.raises(ValueError, match=r"reward 'vlm_judge': nothing answers at http://127.0.0.1:9/v1"):
        VLMJudge(base_url="http://127.0.0.1:9/v1", timeout=1.0)
    with pytest.raises(ValueError, match=r"serves \[.*'test-judge'.*\], not 'other-judge'"):
        VLMJudge(base_url=start_server().url, model="other-judge")
