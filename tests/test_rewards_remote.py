"""Remote rewards against real `python -m flowrl.rewards.serve` processes on loopback.

The served rewards live in tests/remote_rewards_fixture.py: cheap, deterministic functions of the
pixels and prompts, so every remote score can be compared with the same function run here.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import remote_rewards_fixture as fixture  # tests/ is on sys.path under pytest, as for `references`
import requests
import safetensors.torch
import torch

from flowrl.rewards.base import InvalidRewardError, is_pairwise
from flowrl.rewards.combine import RewardSet
from flowrl.rewards.http import RewardServiceError
from flowrl.rewards.registry import load
from flowrl.rewards.remote import RemotePairwise, RemotePointwise, RemoteReward
from flowrl.rewards.serve import make_server, parse_options

REPO = Path(__file__).resolve().parents[1]
TOKEN_ENV = "FLOWRL_TEST_REWARD_TOKEN"
TOKEN = "s3cret-token"


class Server:
    """A `python -m flowrl.rewards.serve` subprocess; its stdout lines arrive on a queue."""

    def __init__(self, name: str, *args: str, log: Path, env: dict | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if k != "FLOWRL_REWARD_TOKEN"}
        environment.update(
            PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), OMP_NUM_THREADS="1", **(env or {})
        )
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowrl.rewards.serve", name, *args],
            cwd=REPO,
            env=environment,
            text=True,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._url: str | None = None
        self._url_lock = threading.Lock()  # clients in several threads may ask for the URL first at once
        self.terminated = False

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float = 60.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output from the server in {timeout} s; its stderr:\n{self.log.read_text()}"
            ) from None

    @property
    def url(self) -> str:
        """The served URL, waiting for the `serving NAME at URL` line the first time (one reader
        takes that line; without the lock, a second thread would wait for a line never coming)."""
        with self._url_lock:
            if self._url is None:
                line = self.next_line()
                assert line.startswith("serving ") and " at http://127.0.0.1:" in line, (line, self.log.read_text())
                self._url = line.rsplit(" ", 1)[1]
        return self._url

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM, once), without waiting."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        """Stop the server, killing it if it does not exit within 10 s."""
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SERVED = {
    # key: (reward name, extra arguments, extra environment); each process costs seconds of torch import
    "plain": ("remote_rewards_fixture:brightness_plus_length", ["--max-request-mb", "1", "--max-batch", "64"], {}),
    "pairwise": ("remote_rewards_fixture:BrightnessPreference", ["--token-env", TOKEN_ENV], {TOKEN_ENV: TOKEN}),
    "unreliable": ("remote_rewards_fixture:unreliable", [], {}),
    "slow": ("remote_rewards_fixture:SlowBrightness", ["--option", "seconds=30"], {}),  # killed by the last test
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """All module-wide servers, started together (each spends a few seconds importing torch)."""
    logs = tmp_path_factory.mktemp("servers")
    started = {
        key: Server(name, "--port", "0", *args, log=logs / f"{key}.log", env=env)
        for key, (name, args, env) in SERVED.items()
    }
    yield started
    for server in started.values():
        server.terminate()  # all at once: each takes a moment to exit
    for server in started.values():
        server.stop()


@pytest.fixture(autouse=True)
def tokens(monkeypatch):
    """No token from the environment running the tests; TOKEN_ENV holds the pairwise server's."""
    monkeypatch.delenv("FLOWRL_REWARD_TOKEN", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def batch(count: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Random images in [0, 1] and prompts of lengths 0..count-1 (unicode, to cross JSON)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    return images, ["é" * i for i in range(count)]


def body(tensors: dict, prompts: object = (), metadata: dict | None = None) -> bytes:
    meta = {"prompts": json.dumps(list(prompts))} if metadata is None else metadata
    return safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


# --- /info and kinds ----------------------------------------------------------------------------


def test_info_names_the_reward_and_its_kind(servers):
    info = requests.get(servers["plain"].url + "/info", timeout=10).json()
    assert info["name"] == "remote_rewards_fixture:brightness_plus_length" and info["kind"] == "pointwise"
    assert info["max_request_bytes"] == 2**20 and info["max_batch"] == 64
    info = requests.get(servers["pairwise"].url + "/info", headers=AUTH, timeout=10).json()
    assert info == {
        "name": "brightness_preference",
        "kind": "pairwise",
        "max_request_bytes": 64 * 2**20,
        "max_batch": 256,
    }


def test_the_remote_object_has_only_the_method_of_its_kind(servers):
    pointwise = load("remote:" + servers["plain"].url)
    pairwise = load("remote:" + servers["pairwise"].url + "/", token_env=TOKEN_ENV)
    assert isinstance(pointwise, RemotePointwise) and not is_pairwise(pointwise) and not hasattr(pointwise, "compare")
    assert isinstance(pairwise, RemotePairwise) and is_pairwise(pairwise) and not hasattr(pairwise, "score")
    assert pointwise.name == "remote:" + servers["plain"].url and pairwise.name == "remote:" + servers["pairwise"].url


# --- exact scores, batching, concurrency ---------------------------------------------------------


def test_float32_transport_is_exact(servers):
    images, prompts = batch(10)
    remote = RemoteReward(servers["plain"].url, wire_dtype="float32")
    assert torch.equal(remote.score(images, prompts), fixture.brightness_plus_length(images, prompts))
    # the way a trainer builds it: a reward spec naming the URL, options per reward name
    name = "remote:" + servers["plain"].url
    scores = RewardSet.load(name, {name: {"wire_dtype": "float32", "batch_size": 4}}).evaluate(images, prompts)
    assert torch.equal(scores.total, fixture.brightness_plus_length(images, prompts))


def test_float16_transport_rounds_only_the_pixels(servers):
    images, prompts = batch(10)
    remote = RemoteReward(servers["plain"].url, wire_dtype="float16")
    scores = remote.score(images, prompts)
    assert torch.equal(
        scores, fixture.brightness_plus_length(images.half().float(), prompts)
    )  # the server sees fp16 pixels upcast exactly
    torch.testing.assert_close(
        scores, fixture.brightness_plus_length(images, prompts), rtol=0, atol=1e-3
    )  # fp16 spacing is <= 2^-11 in [0, 1]


def test_batches_split_across_requests_come_back_in_order(servers):
    images, prompts = batch(23)
    remote = RemoteReward(
        servers["plain"].url, wire_dtype="float32", batch_size=4, concurrency=3
    )  # 6 requests, 3 at a time
    assert torch.equal(remote.score(images, prompts), fixture.brightness_plus_length(images, prompts))
    assert remote.score(images[:0], []).shape == (0,)


def test_concurrent_clients_get_their_own_answers(servers):
    def client(seed: int) -> bool:
        remote = RemoteReward(servers["plain"].url, wire_dtype="float32", batch_size=3, concurrency=2)
        results = []
        for round_ in range(3):
            images, prompts = batch(7 + seed, seed=100 * seed + round_)
            results.append(torch.equal(remote.score(images, prompts), fixture.brightness_plus_length(images, prompts)))
        return all(results)

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(pool.map(client, range(6)))


def test_pairwise_goes_through_compare(servers):
    images_a, prompts = batch(9, seed=1)
    images_b, _ = batch(9, seed=2)
    remote = RemoteReward(servers["pairwise"].url, token_env=TOKEN_ENV, wire_dtype="float32", batch_size=4)
    expected = fixture.BrightnessPreference().compare(images_a, images_b, prompts)
    assert torch.equal(remote.compare(images_a, images_b, prompts), expected)
    response = requests.post(
        servers["pairwise"].url + "/score", data=body({"images": images_a}, prompts), headers=AUTH, timeout=10
    )
    assert response.status_code == 404 and "/compare" in response.json()["error"]


# --- security and limits -------------------------------------------------------------------------


def test_token_is_required_and_accepted(servers, monkeypatch):
    url = servers["pairwise"].url
    with pytest.raises(RewardServiceError, match="401") as caught:
        RemoteReward(url, token_env=None, backoff=10.0)
    # refused at once: a retried failure would say "failed after N attempts"
    assert (
        url in str(caught.value)
        and "refused the request with HTTP 401" in str(caught.value)
        and "attempts" not in str(caught.value)
    )
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(RewardServiceError, match="401"):
        RemoteReward(url, token_env=TOKEN_ENV)
    assert requests.get(url + "/info", timeout=10).status_code == 401
    images_a, prompts = batch(4)
    pair = body({"images_a": images_a, "images_b": images_a.flip(0)}, prompts)
    assert requests.post(url + "/compare", data=pair, timeout=10).status_code == 401
    assert (
        requests.post(
            url + "/compare", data=pair, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=10
        ).status_code
        == 401
    )

    assert requests.post(url + "/compare", data=pair, headers=AUTH, timeout=10).status_code == 200
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    remote = RemoteReward(url, token_env=TOKEN_ENV, wire_dtype="float32")
    expected = fixture.BrightnessPreference().compare(images_a, images_a.flip(0), prompts)
    assert torch.equal(remote.compare(images_a, images_a.flip(0), prompts), expected)


def raw_post(url: str, path: str, headers: dict) -> tuple[int, str]:
    """POST with exactly these headers and no body (what a hostile client may send)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_oversized_requests_are_refused_before_reading(servers):
    url = servers["plain"].url  # 1 MiB and 64 images at most
    status, text = raw_post(
        url, "/score", {"Content-Length": str(10**9)}
    )  # the body never comes; the answer must not wait for it
    assert status == 413 and "1048576" in text
    status, text = raw_post(url, "/score", {})
    assert status == 411 and "Content-Length" in text

    images, prompts = batch(65, size=1)
    response = requests.post(url + "/score", data=body({"images": images}, prompts), timeout=10)
    assert response.status_code == 413 and "at most 64" in response.json()["error"]

    big, big_prompts = batch(24, size=64)  # 24 x 3 x 64 x 64 float32 = 1.1 MiB in one request
    with pytest.raises(RewardServiceError, match="batch_size") as caught:
        RemoteReward(url, wire_dtype="float32", batch_size=24).score(big, big_prompts)
    assert url in str(caught.value) and "1048576" in str(caught.value)
    capped = RemoteReward(url, wire_dtype="float32", batch_size=1000)
    assert capped.batch_size == 64  # the client never sends more than the server takes
    assert torch.equal(capped.score(images, prompts), fixture.brightness_plus_length(images, prompts))


def good_images(count: int = 2) -> torch.Tensor:
    return batch(count)[0]


MALFORMED = {
    "not safetensors": (b"definitely not a safetensors blob", "safetensors"),
    "wrong tensor name": (body({"pixels": good_images()}, ["a", "b"]), "expected the tensors"),
    "integer pixels": (body({"images": (good_images() * 255).to(torch.uint8)}, ["a", "b"]), "dtype"),
    "float64 pixels": (body({"images": good_images().double()}, ["a", "b"]), "dtype"),
    "one channel": (body({"images": good_images()[:, :1]}, ["a", "b"]), "shape"),
    "no prompts": (body({"images": good_images()}, metadata={}), "prompts"),
    "prompts not json": (body({"images": good_images()}, metadata={"prompts": "[a, b"}), "prompts"),
    "prompts not strings": (body({"images": good_images()}, metadata={"prompts": "[1, 2]"}), "prompts"),
    "too few prompts": (body({"images": good_images()}, ["a"]), "2 images but the metadata has 1 prompts"),
    "pixels out of range": (body({"images": good_images() * 3}, ["a", "b"]), "[0, 1]"),
    "nan pixels": (body({"images": good_images() * float("nan")}, ["a", "b"]), "NaN"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bodies_are_refused_with_400(servers, case):
    data, words = MALFORMED[case]
    response = requests.post(servers["plain"].url + "/score", data=data, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_mismatched_pairs_are_refused_with_400(servers):
    data = body({"images_a": good_images(2), "images_b": good_images(2)[..., :4]}, ["a", "b"])
    response = requests.post(servers["pairwise"].url + "/compare", data=data, headers=AUTH, timeout=10)
    assert response.status_code == 400 and "differ in shape" in response.json()["error"]


# --- failures ------------------------------------------------------------------------------------


def test_nan_scores_fail_naming_the_reward_and_samples(servers):
    url = servers["unreliable"].url
    images, prompts = batch(6)  # prompt lengths 0..5: samples 1, 3, 5 are NaN
    with pytest.raises(InvalidRewardError, match=r"samples 1, 3, 5 of 6") as caught:
        RemoteReward(url, batch_size=2).score(images, prompts)  # indices count across the three requests
    assert f"remote:{url}" in str(caught.value)
    dropped = RemoteReward(url, batch_size=2, wire_dtype="float32", on_invalid="drop").score(images, prompts)
    assert torch.isnan(dropped[1::2]).all() and torch.equal(dropped[0::2], fixture.unreliable(images, prompts)[0::2])
    response = requests.post(url + "/score", data=body({"images": images}, prompts), timeout=10)
    assert response.json()["scores"][:2] == [pytest.approx(float(images[0].double().mean())), None]


def test_a_failing_reward_is_a_500_the_client_reports(servers):
    url = servers["unreliable"].url
    images, prompts = batch(2)[0], ["fail", "b"]
    response = requests.post(url + "/score", data=body({"images": images}, prompts), timeout=10)
    assert response.status_code == 500 and "broken on purpose" in response.json()["error"]
    with pytest.raises(RewardServiceError, match="broken on purpose") as caught:
        RemoteReward(url, retries=1, backoff=0.01).score(images, prompts)
    assert url in str(caught.value)


def test_a_killed_server_fails_after_retries_and_a_restarted_one_answers(servers, tmp_path):
    first = servers["slow"]
    url = first.url
    images, prompts = batch(3)
    impatient = RemoteReward(url, retries=2, backoff=0.05, wire_dtype="float32")
    # 8 retries wait at least 0.25 * (1 + 2 + ... + 128) / 2 ~ 32 s in all: ample for a restart
    patient = RemoteReward(url, retries=8, backoff=0.25, wire_dtype="float32")
    outcome: dict = {}
    threads = [
        threading.Thread(
            target=lambda key=key, remote=remote: outcome.update({key: _call(remote.score, images, prompts)})
        )
        for key, remote in (("impatient", impatient), ("patient", patient))
    ]
    for thread in threads:
        thread.start()
    assert first.next_line() == "scoring"  # one request is inside the model, the other waits for it
    time.sleep(0.2)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    threads[0].join(timeout=20)
    error = outcome["impatient"]
    assert isinstance(error, RewardServiceError) and url in str(error) and "3 attempts" in str(error), error

    second = Server(
        "remote_rewards_fixture:SlowBrightness",
        "--port",
        url.rsplit(":", 1)[1],
        "--option",
        "seconds=0",
        log=tmp_path / "second.log",
    )
    try:
        assert second.url == url
        threads[1].join(timeout=60)
        assert torch.equal(outcome["patient"], images.double().mean(dim=(1, 2, 3)).float()), outcome["patient"]
    finally:
        second.stop()


def _call(fn, *args) -> object:
    """fn(*args), or the exception it raised (to hand back from a thread)."""
    try:
        return fn(*args)
    except Exception as error:
        return error


# --- in-process pieces ---------------------------------------------------------------------------


def test_bad_urls_and_options_fail_naming_the_value():
    with pytest.raises(ValueError, match="'localhost:8000'"):
        RemoteReward("localhost:8000")
    with pytest.raises(ValueError, match="float16"):
        RemoteReward("http://127.0.0.1:9", wire_dtype="bfloat16")
    with pytest.raises(ValueError, match="batch_size"):
        RemoteReward("http://127.0.0.1:9", batch_size=0)
    assert parse_options(["a=1", "b=0.5", "c=true", "d=text", "e="]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "text",
        "e": "",
    }
    with pytest.raises(ValueError, match="'noequals'"):
        parse_options(["noequals"])


def test_binding_beyond_loopback_without_a_token_warns(capsys):
    server = make_server(fixture.BrightnessPreference(), host="0.0.0.0", port=0)
    server.server_close()
    assert "WARNING" in capsys.readouterr().err
    server = make_server(fixture.BrightnessPreference(), host="127.0.0.1", port=0)
    server.server_close()
    assert "WARNING" not in capsys.readouterr().err


def test_the_token_is_checked_before_anything_is_answered(servers):
    url = servers["pairwise"].url
    assert requests.get(url + "/no-such-endpoint", timeout=10).status_code == 401  # not 404: nothing revealed
    assert requests.get(url + "/no-such-endpoint", headers=AUTH, timeout=10).status_code == 404


@pytest.mark.parametrize(
    "shape, message",
    [((1, 3, 0, 8), "at least one pixel"), ((1, 3, 12, 5000), "at most 4096"), ((1, 3, 8, 200), "16:1")],
)
def test_image_sizes_are_capped_before_any_resize(servers, shape, message):
    response = requests.post(
        servers["plain"].url + "/score", data=body({"images": torch.zeros(shape)}, ["p"]), timeout=10
    )
    assert response.status_code == 400 and message in response.json()["error"]


def test_a_failing_reward_is_not_retried_and_a_busy_server_says_when_to_come_back():
    from flowrl.rewards.serve import make_server

    calls = []

    class Failing:
        name = "failing"

        def score(self, images, prompts):
            calls.append(len(prompts))
            raise RuntimeError("deterministic failure")

    server = make_server(Failing(), max_batch=8)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        remote = RemoteReward(server.url, retries=6, backoff=0.01)
        with pytest.raises(RewardServiceError, match="deterministic failure"):
            remote.score(*batch(2))
        assert calls == [2]  # one request: the server marked the 500 as not worth retrying
    finally:
        server.shutdown()
        server.server_close()
    busy = make_server(Failing(), max_connections=1)
    busy.slots.acquire()  # its one connection slot taken, before any client came
    thread = threading.Thread(target=busy.serve_forever, daemon=True)
    thread.start()
    try:
        response = requests.get(busy.url + "/info", timeout=10)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    finally:
        busy.shutdown()
        busy.server_close()


def test_retries_stop_at_the_deadline_and_honour_retry_after():
    from flowrl.rewards.http import post_with_retries, retry_after

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RewardServiceError, match="stopped: the 0.2 s deadline"):
        post_with_retries(
            requests.Session(),
            f"http://127.0.0.1:{port}/score",
            what="x",
            timeout=1,
            retries=5,
            backoff=1.0,
            deadline=0.2,
        )
    response = requests.Response()
    response.headers["Retry-After"] = "7"
    assert retry_after(response) == 7.0
    response.headers["Retry-After"] = "soon"
    assert retry_after(response) == 0.0


def test_a_token_is_not_sent_in_clear_beyond_this_machine_unless_asked(monkeypatch):
    from flowrl.rewards.http import warn_token_in_clear

    token = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    monkeypatch.delenv("FLOWRL_ALLOW_PLAIN_HTTP_TOKEN", raising=False)
    with pytest.warns(UserWarning, match="not sending the API key over plain http to 10.1.2.3"):
        assert warn_token_in_clear("http://10.1.2.3:8731", token) == {"Content-Type": "application/json"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_token_in_clear("http://127.0.0.1:8731", token) == token
        assert warn_token_in_clear("https://judge.example.org", token) == token
        assert warn_token_in_clear("http://10.1.2.3:8731", {}) == {}
    monkeypatch.setenv("FLOWRL_ALLOW_PLAIN_HTTP_TOKEN", "1")
    with pytest.warns(UserWarning, match="anyone on the path can read it"):
        assert warn_token_in_clear("http://10.1.2.3:8731", token) == token
