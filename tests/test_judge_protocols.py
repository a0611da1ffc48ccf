"""Named vlm_judge protocols on a synthetic stand-in of Pref-GRPO's template module: the template
is read without running the module and checked by hash, the request is Pref-GRPO's (JPEG q95,
model UnifiedReward, no temperature) and answers are read by its rule (first <answer> block)."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from openai_stub import server_fixture

from conftest import serve_bytes
from flowrl.rewards import judge_protocols
from flowrl.rewards.judge_protocols import JudgeProtocol, extract_template, parse_pref_grpo
from flowrl.rewards.vlm_judge import VLMJudge

SERVER = Path(__file__).resolve().parent / "judge_server.py"
start_server = server_fixture(SERVER)
TEMPLATE = "Judge two images for 「{prompt}」.\n        Put the verdict in <answer></answer>.\n        "
MODULE = f"""
import os
os.system("touch MARKER")


def get_unifiedreward_think_image_template():
    return {TEMPLATE!r}


def get_other_template():
    return f"{{x}}"
"""


def module(tmp_path) -> str:
    return MODULE.replace("MARKER", str(tmp_path / "ran"))


def test_the_template_is_read_from_the_syntax_tree_without_running_the_module(tmp_path):
    find = ("function", "get_unifiedreward_think_image_template")
    assert extract_template(module(tmp_path), find) == TEMPLATE and not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match="an f-string with a field other than"):
        extract_template(module(tmp_path), ("function", "get_other_template"))
    with pytest.raises(ValueError, match="no top-level function 'missing'"):
        extract_template(module(tmp_path), ("function", "missing"))
    with pytest.raises(ValueError, match=r"fields \['other', 'prompt'\]"):
        extract_template("template = 'a {prompt} {other}'", ("assign", "template"))
    assert extract_template("template = 'x {prompt}'", ("assign", "template")) == "x {prompt}"


def test_an_f_string_template_keeps_its_prompt_field_and_nothing_else():
    source = 'prompt = ""\nproblem = f"""Caption: 「{prompt}」; say {{it}} in <answer></answer>.\n    """\n'
    template = extract_template(source, ("assign", "problem"))
    assert template == "Caption: 「{prompt}」; say {{it}} in <answer></answer>.\n    "
    assert template.format(prompt="a cat") == "Caption: 「a cat」; say {it} in <answer></answer>.\n    "
    for bad, message in [
        ('problem = f"{prompt!r}"', "field other than"),
        ('problem = f"{prompt:>9}"', "field other than"),
        ('problem = f"{other}"', "field other than"),
        ('problem = f"{os.system(1)}"', "field other than"),
        ('problem = f"no field"', "has no {prompt} field"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            extract_template(bad, ("assign", "problem"))


def install(tmp_path, monkeypatch) -> None:
    """The synthetic module served as the pinned file (its hashes pinned in its place) and downloaded."""
    source = module(tmp_path).encode()
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "cache"))
    serve_bytes(monkeypatch, source)
    preset = dict(judge_protocols.PRESETS["pref_grpo"])
    monkeypatch.setitem(judge_protocols.PRESETS, "pref_grpo", preset)
    with pytest.raises(ValueError, match="not the pinned file"):
        judge_protocols.download_judge_protocol("pref_grpo")
    preset["file_sha256"] = hashlib.sha256(source).hexdigest()
    with pytest.raises(ValueError, match="not the expected one"):
        judge_protocols.download_judge_protocol("pref_grpo")
    preset["template_sha256"] = hashlib.sha256(TEMPLATE.encode()).hexdigest()
    path = judge_protocols.download_judge_protocol("pref_grpo")
    assert json.loads(path.read_text())["template"] == TEMPLATE and not (tmp_path / "ran").exists()


def test_download_checks_both_hashes_and_caches(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch)
    assert JudgeProtocol.load("pref_grpo").template == TEMPLATE
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="flowrl judge-protocol pref_grpo"):
        JudgeProtocol.load("pref_grpo")
    with pytest.raises(ValueError, match="unknown judge protocol 'pref'"):
        JudgeProtocol.load("pref")


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("<think>x</think><answer>Image 1 is better</answer>", 1.0),
        ("<answer>Image 2 is better</answer>", 0.0),
        ("<answer>Image 2 is better</answer><answer>Image 1 is better</answer>", 0.0),  # the first block
        ("<answer>Image 1 is better than Image 2 is better</answer>", 1.0),  # "Image 1" is tested first
        ("<answer>image 2 is better</answer>", None),  # case-sensitive
        ("Image 2 is better", None),  # no tag
        ("<answer>Image 2 is better", None),  # not closed
        ("<answer>Tie</answer>", None),
    ],
)
def test_answers_are_read_by_pref_grpo_s_rule(answer, expected):
    assert parse_pref_grpo(answer) == expected


def grey(*levels: float) -> torch.Tensor:
    return torch.stack([torch.full((3, 8, 8), level) for level in levels])


def test_the_judge_sends_pref_grpo_s_request(tmp_path, monkeypatch, start_server):
    install(tmp_path, monkeypatch)
    server = start_server()
    judge = VLMJudge(base_url=server.url, protocol="pref_grpo", timeout=5.0)
    assert judge.compare(grey(0.9, 0.2), grey(0.1, 0.7), ["a cat", "a dog"]).tolist() == [1.0, 0.0]
    stats = server.stats()
    last = stats["last"]
    assert last["model"] == "UnifiedReward" and last["temperature"] is None  # the server's default
    assert last["max_tokens"] == 4096 and last["do_sample"] is False
    assert last["mimes"] == ["image/jpeg", "image/jpeg"]
    assert sorted(stats["prompts"]) == sorted(TEMPLATE.format(prompt=p) for p in ("a cat", "a dog"))
    with pytest.raises(ValueError, match="fixes the instruction and the image format"):
        VLMJudge(base_url=server.url, protocol="pref_grpo", image_format="png")
