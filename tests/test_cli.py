"""The `flowrl` command: every entry point starts, prints help, and does its job on small settings."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from flowrl.benchmarks.toyshapes.prompts import split_of
from flowrl.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(capsys, monkeypatch):
    """`flowrl ARGS` in this process (a fresh Python per case costs seconds of imports): its exit
    code, stdout and stderr. `test_the_module_entry_point_runs` covers `python -m flowrl` itself."""
    monkeypatch.chdir(ROOT)

    def invoke(*args, ok=True):
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors and --help
            code = exit_.code
        captured = capsys.readouterr()
        result = SimpleNamespace(returncode=code or 0, stdout=captured.out, stderr=captured.err)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return invoke


def test_the_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "flowrl", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: flowrl")
    result = subprocess.run(
        [sys.executable, "-m", "flowrl", "sample", "--prompt", "a circle", "--n", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2 and "expected a positive integer, got 0" in result.stderr


@pytest.mark.parametrize(
    "command", [[], ["sample"], ["eval"], ["eval", "toyshapes"], ["prompts"], ["rewards"], ["serve-reward"]]
)
def test_help(run, command):
    out = run(*command, "--help").stdout
    assert out.startswith("usage: flowrl")


def test_pretrain_from_a_missing_model_fails_with_a_message(run, tmp_path):
    result = run(
        "pretrain-toy", "--init", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--steps", "1", ok=False
    )
    assert result.returncode == 2 and "none/config.json not found" in result.stderr and "Traceback" not in result.stderr


def test_pretrain_script_help(run):
    result = subprocess.run(
        [sys.executable, "scripts/pretrain_toy.py", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "--steps" in result.stdout
    assert "--ship" in run("pretrain-toy", "--help").stdout


def test_sample_writes_a_grid(run, tmp_path):
    out = tmp_path / "grid.png"
    result = run("sample", "--prompt", "a blue square", "--n", "3", "--steps", "2", "--scale", "2", "--out", str(out))
    assert "wrote 3 samples" in result.stdout
    width, height = Image.open(out).size
    assert height == 32 * 2 + 4 and width == 3 * (32 * 2 + 2) + 2  # one row of three, 2 px padding


def test_eval_writes_a_report(run, tmp_path):
    out = tmp_path / "report.json"
    result = run("eval", "toyshapes", "--images-per-category", "2", "--steps", "2", "--json", str(out))
    assert "overall" in result.stdout and "color_attr" in result.stdout
    report = json.loads(out.read_text())
    assert report["num_images"] == 12 and len(report["records"]) == 12
    assert set(report["accuracy"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert report["settings"]["steps"] == 2
    assert report["settings"]["split"] == "heldout" and report["settings"]["eta"] == 0.0


def test_eval_on_the_train_split_with_the_sde_sampler(run, tmp_path):
    out = tmp_path / "report.json"
    run(
        "eval",
        "toyshapes",
        "--images-per-category",
        "1",
        "--steps",
        "2",
        "--split",
        "train",
        "--eta",
        "0.3",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["settings"]["split"] == "train" and report["settings"]["eta"] == 0.3
    assert len(report["records"]) == 6 and all(split_of(r["prompt"]) in ("train", "both") for r in report["records"])
    result = run("eval", "toyshapes", "--eta", "-0.1", ok=False)
    assert result.returncode == 2 and "expected a finite number >= 0, got -0.1" in result.stderr


def test_eval_of_chosen_prompts(run, tmp_path):
    """--prompt judges the prompts given, --images-per-prompt images each with seeds 0, 1, ... in
    order: the same images as sampling them directly, a row per prompt, and a pairable report."""
    from flowrl.benchmarks.toyshapes.verify import verify
    from flowrl.generate import generate
    from flowrl.policies import load_toy

    texts = ["a circle and a square", "three triangles"]
    out = tmp_path / "prompts.json"
    result = run(
        "eval",
        "toyshapes",
        "--prompt",
        texts[0],
        "--prompt",
        texts[1],
        "--images-per-prompt",
        "3",
        "--steps",
        "2",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())
    assert [r["prompt"] for r in report["records"]] == [texts[0]] * 3 + [texts[1]] * 3
    assert report["settings"]["prompts"] == texts and report["settings"]["images_per_prompt"] == 3
    assert set(report["accuracy"]) == {"two_object", "counting"}
    direct = verify(
        generate(load_toy(), [texts[0]] * 3 + [texts[1]] * 3, list(range(6)), steps=2), texts[:1] * 3 + texts[1:] * 3
    )
    assert [r["correct"] for r in report["records"]] == [a.correct for a in direct]
    assert [r["score"] for r in report["records"]] == pytest.approx([a.score for a in direct])
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(tuple(texts))]
    for text, rows_of in zip(texts, rows):
        mine = [a for a, t in zip(direct, texts[:1] * 3 + texts[1:] * 3) if t == text]
        assert rows_of[-3:] == [
            f"{100 * sum(a.correct for a in mine) / 3:.1f}%",
            f"{sum(a.score for a in mine) / 3:.3f}",
            "3",
        ]
    compared = run("eval", "compare", str(out), str(out)).stdout
    assert "the same prompts and starting noise" in compared


def test_eval_of_chosen_prompts_refuses_what_does_not_apply(run):
    result = run("eval", "toyshapes", "--prompt", "a circel", ok=False)
    assert result.returncode == 2 and "'a circel' is not a ToyShapes prompt" in result.stderr
    result = run("eval", "toyshapes", "--prompt", "a circle", "--split", "train", ok=False)
    assert result.returncode == 2 and "--split and --images-per-category do not apply" in result.stderr
    result = run("eval", "toyshapes", "--images-per-prompt", "4", ok=False)
    assert result.returncode == 2 and "--images-per-prompt goes with --prompt" in result.stderr


def test_prompts_lists_a_split(run):
    lines = run("prompts", "--split", "heldout", "--category", "counting").stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("counting") for line in lines)


def test_bad_input_fails_with_a_clear_message(run):
    result = run("sample", "--prompt", "a pink star", "--steps", "1", ok=False)
    assert result.returncode == 2 and "does not know: ['pink', 'star']" in result.stderr
    result = run("sample", "--prompt", "a circle", "--n", "0", ok=False)
    assert result.returncode == 2 and "expected a positive integer, got 0" in result.stderr
    result = run("sample", "--prompt", "a circle", "--checkpoint", "/nonexistent", ok=False)
    assert result.returncode == 2 and "config.json not found" in result.stderr


def test_the_documented_example_prompts_are_valid():
    import re
    from pathlib import Path

    from flowrl.policies import load_toy

    root = Path(__file__).resolve().parent.parent
    text = (root / "Makefile").read_text() + (root / "README.md").read_text()
    prompts = set(re.findall(r'--prompt "([^"]+)"', text))
    assert prompts
    load_toy().model.text_encoder.tokenize(sorted(prompts))  # raises on unknown words or too many


def test_rewards_lists_every_builtin_with_a_description(run):
    from flowrl.rewards.registry import BUILTIN

    out = run("rewards").stdout
    for name, (_, _, description) in BUILTIN.items():
        assert f"{name} " in out and description in out
    assert "remote:http://host:port" in out and "pairwise:NAME" in out
