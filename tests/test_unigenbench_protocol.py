"""UniGenBench's official judging protocol on a synthetic stand-in of the official module: the
template is read without running the module, the request is rendered as the official client
builds it (written out by hand here), answers are read by the official rule (score == 1)."""

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from conftest import serve_bytes
from flowrl.benchmarks.unigenbench import protocol
from flowrl.benchmarks.unigenbench.judge import Judge
from flowrl.benchmarks.unigenbench.protocol import OfficialProtocol, extract_protocol, parse_official
from flowrl.benchmarks.unigenbench.types import BenchPrompt, TestPoint

# The official module's shape (top-level literals, LANG_CONFIGS naming them, a builder function),
# with made-up text. The os.system line must never run.
SYNTHETIC = """
import os
os.system("touch {marker}")

EXPLANATION_DICT_EN = {{"Style": "how it looks", "Attribute - Color": "the colours asked for"}}
EXPLANATION_DICT_ZH = {{"风格": "画风"}}

SYSTEM_PROMPT_EN_TEMPLATE = \'\'\'Judge 「{{prompt}}」 on {{testpoint}}.
            {{explanation}}
            {{test_explanation}}
            <prompt>{{prompt}}</prompt><checkpoint>{{testpoint}}</checkpoint>
            \'\'\'
SYSTEM_PROMPT_ZH_TEMPLATE = \'\'\'评 {{prompt}} {{testpoint}} {{explanation}} {{test_explanation}}\'\'\'

LANG_CONFIGS = {{
    "en": {{"explanation_dict": EXPLANATION_DICT_EN, "system_prompt_template": SYSTEM_PROMPT_EN_TEMPLATE,
            "checkpoint_header": "Checkpoints Defination", "checkpoint_desc_header": "Checkpoints Description"}},
    "zh": {{"explanation_dict": EXPLANATION_DICT_ZH, "system_prompt_template": SYSTEM_PROMPT_ZH_TEMPLATE,
            "checkpoint_header": "考点说明", "checkpoint_desc_header": "考点描述说明"}},
}}


def build_system_prompt(prompt, testpoint, test_desc, lang):
    return f"{{prompt}}"
"""


def synthetic(tmp_path) -> str:
    return SYNTHETIC.format(marker=tmp_path / "ran")


def test_the_template_is_read_from_the_syntax_tree_without_running_the_module(tmp_path):
    languages = extract_protocol(synthetic(tmp_path))
    assert not (tmp_path / "ran").exists()
    assert languages["en"]["definitions"] == {"Style": "how it looks", "Attribute - Color": "the colours asked for"}
    assert languages["en"]["template"].startswith("Judge 「{prompt}」 on {testpoint}.\n            {explanation}")
    assert languages["zh"]["checkpoint_header"] == "考点说明"


@pytest.mark.parametrize(
    "change,message",
    [
        (("SYSTEM_PROMPT_ZH_TEMPLATE = ", "OTHER = "), "no top-level"),
        (("{{test_explanation}}'''", "{{test_explanation}} {{extra}}'''"), "fields"),
        (("SYSTEM_PROMPT_EN_TEMPLATE = '''", "SYSTEM_PROMPT_EN_TEMPLATE = f'''"), "not a literal"),
        (('"checkpoint_header": "考点说明"', '"checkpoint_header": HEADER'), "not a string literal"),
    ],
)
def test_a_module_of_another_shape_is_refused(tmp_path, change, message):
    source = SYNTHETIC.replace(*change).format(marker=tmp_path / "ran")
    with pytest.raises(ValueError, match=message):
        extract_protocol(source)


def official_protocol(tmp_path) -> OfficialProtocol:
    languages = extract_protocol(synthetic(tmp_path))
    return OfficialProtocol(**languages["en"], language="en")


def test_the_request_text_is_rendered_as_the_official_client_builds_it(tmp_path):
    text = official_protocol(tmp_path).render("a red cat", ["Style", "Attribute - Color"], ["cartoon", "red cat"])
    names = "['Style', 'Attribute - Color']"  # the Python list, as str() writes it
    definitions = "Checkpoints Defination:「\nStyle: how it looks\nAttribute - Color: the colours asked for\n」"
    descriptions = "Checkpoints Description:「\nStyle: cartoon\nAttribute - Color: red cat\n」"
    indent = "\n" + " " * 12
    expected = (
        f"Judge 「a red cat」 on {names}.{indent}{definitions}{indent}{descriptions}"
        f"{indent}<prompt>a red cat</prompt><checkpoint>{names}</checkpoint>{indent}"
    )
    assert text == expected
    with pytest.raises(ValueError, match="no definition"):
        official_protocol(tmp_path).render("x", ["Unknown"], ["y"])


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("<analysis>['ok', 'no']</analysis><score>[1, 0]</score>", [(True, "ok"), (False, "no")]),
        ("<analysis>['ok', 'no']</analysis><score>['1', 1.0]</score>", [(False, "ok"), (True, "no")]),
        ("x <analysis>('a', 'b')</analysis> y <score>1, 0</score>", [(True, "a"), (False, "b")]),  # tuples
        ("<analysis>['a','b']</analysis><score>[1,0]</score><score>[0,0]</score>", [(True, "a"), (False, "b")]),
        ("<analysis>['a', 'b']</analysis><score>[True, False]</score>", None),
        ("<analysis>['a']</analysis><score>[1, 0]</score>", None),
        ("<analysis>['a', 'b']</analysis><score>[true, false]</score>", None),
        ("<analysis>['a', 'b']</analysis>", None),
        ('{"1": {"verdict": "yes"}}', None),
        ("<analysis>['a', 'b']</analysis><score>1</score>", None),
    ],
)
def test_answers_are_read_by_the_official_rule(answer, expected):
    assert parse_official(answer, 2) == expected


def test_download_checks_the_pinned_hash_and_caches_the_extracted_values(tmp_path, monkeypatch):
    source = synthetic(tmp_path).encode()
    serve_bytes(monkeypatch, source)
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="not the pinned file"):
        protocol.download_protocol()
    monkeypatch.setattr(protocol, "SOURCE_SHA256", hashlib.sha256(source).hexdigest())
    path = protocol.download_protocol()
    assert json.loads(path.read_text())["commit"] == protocol.COMMIT and not (tmp_path / "ran").exists()
    loaded = OfficialProtocol.load("en")
    assert loaded.definitions["Style"] == "how it looks" and loaded.fingerprint == hashlib.sha256(source).hexdigest()
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unigenbench-protocol"):
        OfficialProtocol.load("en")


class OfficialStub(BaseHTTPRequestHandler):
    """Answers in the official format: first an answer that does not parse, then scores [1, '1']."""

    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        OfficialStub.requests.append((self.path, body))
        if len(OfficialStub.requests) == 1:
            answer = "<analysis>['only one']</analysis><score>[1]</score>"
        else:
            answer = "<description>...</description><analysis>['shown', 'shown']</analysis><score>[1, '1']</score>"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_judge_sends_the_official_request_and_asks_again_until_it_parses(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), OfficialStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    OfficialStub.requests = []
    try:
        image = tmp_path / "7_0.png"
        Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
        official = official_protocol(tmp_path)
        judge = Judge(base_url=f"http://127.0.0.1:{server.server_port}/v1", protocol=official)
        prompt = BenchPrompt(
            7, "a red cat", "t", "s", (TestPoint("Style", "cartoon"), TestPoint("Attribute - Color", "red"))
        )
        verdicts, _ = judge.judge_image(image, prompt)
    finally:
        server.shutdown()
    assert [v.correct for v in verdicts] == [True, False]  # '1' is not 1
    assert len(OfficialStub.requests) == 2  # the first answer did not parse: asked again, the same request
    path, body = OfficialStub.requests[0]
    assert OfficialStub.requests[1][1] == body and path == "/v1/chat/completions"
    assert set(body) == {"model", "messages", "do_sample", "max_tokens"} and body["model"] == "QwenVL"
    assert body["max_tokens"] == 4096 and body["do_sample"] is False  # no temperature: the server's default
    (message,) = body["messages"]
    assert message["role"] == "user" and [part["type"] for part in message["content"]] == ["image_url", "text"]
    assert message["content"][1]["text"] == official.render(
        "a red cat", ["Style", "Attribute - Color"], ["cartoon", "red"]
    )
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    expected = io.BytesIO()
    Image.open(image).convert("RGB").save(expected, format="JPEG", quality=95)
    assert base64.b64decode(url.split(",", 1)[1]) == expected.getvalue()


def test_official_sampling_is_flux_s_dynamic_shift_and_fixed_seeds():
    import math

    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flowrl.benchmarks.unigenbench.generate import image_seed
    from flowrl.benchmarks.unigenbench.run import flux_dynamic_shift
    from flowrl.samplers.grid import time_shift_sigmas

    assert flux_dynamic_shift(None, 1024) == pytest.approx(math.exp(1.15))  # 4096 image tokens: max_shift
    assert flux_dynamic_shift(None, 512) == pytest.approx(math.exp(0.5 + 0.65 * (1024 - 256) / (4096 - 256)))
    # diffusers' FLUX pipeline: sigmas linspace(1, 1/N, N), exponential time shift with mu
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 30, 30), mu=1.15)
    assert torch.allclose(time_shift_sigmas(30, flux_dynamic_shift(None, 1024)), scheduler.sigmas.float(), atol=1e-6)
    assert [image_seed(0, index, k, "official") for index in (3, 500) for k in range(2)] == [3407, 3408, 3407, 3408]


class ListsNoModels(BaseHTTPRequestHandler):
    """A judge root whose GET /v1/models lists nothing (so any model name passes the check)."""

    def do_GET(self):
        data = b'{"data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_official_sampling_refuses_a_checkpoint_without_published_settings(tmp_path):
    import subprocess
    import sys

    from flowrl.benchmarks.unigenbench.prompts import write_prompts

    prompts = tmp_path / "p.csv"
    write_prompts(prompts, [BenchPrompt(0, "a red circle", "t", "s", (TestPoint("Style", "red"),))])
    server = ThreadingHTTPServer(("127.0.0.1", 0), ListsNoModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flowrl", "eval", "unigenbench", str(prompts), "--out", str(tmp_path / "run"),
             "--sampling", "official", "--protocol", "flowrl", "--device", "cpu",
             "--judge-url", f"http://127.0.0.1:{server.server_port}/v1"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert done.returncode == 2 and "published for FLUX.1-dev only" in done.stderr and "Traceback" not in done.stderr


def test_an_official_prompt_file_is_named_by_its_hash():
    from flowrl.benchmarks.unigenbench.download import COMMIT, SHA256
    from flowrl.benchmarks.unigenbench.run import prompt_source

    assert prompt_source(SHA256["test_prompts_zh.csv"]) == f"CodeGoat24/UniGenBench@{COMMIT}:data/test_prompts_zh.csv"
    assert prompt_source("0" * 64) is None
