"""`flowrl eval unigenbench` end to end on the toy model against a real judge server process:
images, judgments, results equal to a hand tally, reports, and a resume after the evaluation is
killed mid-judging that redoes no image and no recorded judgment."""

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from openai_stub import start_server, stop_server
from PIL import Image

from flowrl.benchmarks.unigenbench.prompts import write_prompts
from flowrl.benchmarks.unigenbench.types import BenchPrompt, TestPoint

TESTS = Path(__file__).resolve().parent
SERVER = TESTS / "unigen_judge_server.py"

PROMPTS = [
    BenchPrompt(
        0,
        "a red circle",
        "Art",
        "Graphic Art",
        (TestPoint("Attribute - Color", "red circle"), TestPoint("Style", "flat shapes")),
    ),
    BenchPrompt(
        1,
        "two blue squares",
        "Design",
        "Logo Design",
        (TestPoint("Attribute - Quantity", "two"), TestPoint("Attribute - Color", "blue")),
    ),
    BenchPrompt(
        2,
        "a green triangle above a yellow circle",
        "Art",
        "Graphic Art",
        (
            TestPoint("Entity Layout - Two-Dimensional Space", "above"),
            TestPoint("Attribute - Color", "green triangle"),
            TestPoint("Style", "flat"),
        ),
    ),
]


def evaluate(prompts_file: Path, out: Path, url: str, *extra: str, wait: bool = True):
    command = [
        sys.executable,
        "-m",
        "flowrl",
        "eval",
        "unigenbench",
        str(prompts_file),
        "--out",
        str(out),
        "--images-per-prompt",
        "2",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--judge-url",
        url,
        "--judge-model",
        "test-judge",
        "--judge-option",
        "backoff=0.05",
        "--protocol",
        "flowrl",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def expected_verdict(image: Path, name: str) -> bool:
    """The test server's rule, computed here from the image on disk."""
    bright = np.asarray(Image.open(image).convert("RGB"), dtype=np.float64).mean() / 255 > 0.5
    return bright != bool(hashlib.sha256(name.encode()).digest()[0] & 1)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts_en.csv"
    write_prompts(path, PROMPTS)
    return path


def test_the_whole_pipeline_matches_a_hand_tally(prompts_file, tmp_path):
    server, url = start_server(SERVER)
    try:
        done = evaluate(prompts_file, tmp_path / "run", url, "--judge-concurrency", "2")
    finally:
        stop_server(server)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    images = sorted((out / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{i}_{k}.png" for i in range(3) for k in range(2)]
    # Hand tally: every (image, test point) verdict counts once; a primary dimension is the name
    # before " - "; overall is the unweighted mean of the primary accuracies.
    tally: dict[str, list[int]] = {}
    for prompt in PROMPTS:
        for k in range(2):
            for point in prompt.testpoints:
                counts = tally.setdefault(point.primary, [0, 0])
                counts[0] += expected_verdict(out / "images" / f"{prompt.index}_{k}.png", point.name)
                counts[1] += 1
    results = json.loads((out / "results.json").read_text())
    primaries = {name: value["accuracy"] for name, value in results["primary_dimensions"].items()}
    assert primaries == pytest.approx({name: c / t for name, (c, t) in tally.items()})
    assert results["overall"] == pytest.approx(np.mean([c / t for c, t in tally.values()]))
    html = (out / "report.html").read_text()
    assert all(f"images/{p.name}" in html for p in images) and "a green triangle above a yellow circle" in html
    assert "Overall" in done.stdout and (out / "results.md").is_file() and (out / "results.csv").is_file()

    # A second run with the same folder draws nothing and asks the judge nothing.
    mtimes = [p.stat().st_mtime_ns for p in images]
    again = evaluate(prompts_file, out, "http://127.0.0.1:9/v1")  # nothing listens there: no request may be made
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 images drawn (6 already there), 0 judged (6 already judged)" in again.stdout
    assert [p.stat().st_mtime_ns for p in images] == mtimes
    assert json.loads((out / "results.json").read_text())["overall"] == results["overall"]


def test_a_run_killed_mid_judging_resumes_without_redoing_anything(prompts_file, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "answers.jsonl"
    server, url = start_server(SERVER, "--delay", "0.4", "--log", str(log))
    try:
        process = evaluate(prompts_file, out, url, "--judge-concurrency", "1", wait=False)
        store = out / "judgments.sqlite"
        deadline = time.time() + 120
        judged_before: set[str] = set()
        while time.time() < deadline and len(judged_before) < 2:
            time.sleep(0.1)
            if store.is_file():
                with sqlite3.connect(store) as db:
                    try:
                        judged_before = {row[0] for row in db.execute("SELECT image FROM images")}
                    except sqlite3.OperationalError:  # the table is not created yet
                        pass
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert 2 <= len(judged_before) < 6, judged_before
        with sqlite3.connect(store) as db:
            judged_at_kill = {row[0] for row in db.execute("SELECT image FROM images")}
        images_at_kill = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
        assert len(images_at_kill) == 6  # generation finished before judging began

        done = evaluate(prompts_file, out, url, "--judge-concurrency", "2")
        assert done.returncode == 0, done.stderr[-3000:]
        stats = json.loads(__import__("urllib.request").request.urlopen(url.replace("/v1", "/stats")).read())
    finally:
        stop_server(server)
    assert (
        f"0 images drawn (6 already there), {6 - len(judged_at_kill)} judged ({len(judged_at_kill)} already judged)"
        in done.stdout
    )
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")} == images_at_kill  # no image redrawn
    keys = {hashlib.sha256((out / "images" / name).read_bytes()).hexdigest()[:16]: name for name in images_at_kill}
    for key, count in stats["requests_per_image"].items():
        # A judgment recorded before the kill is never asked again; only the one in flight may be.
        assert count == 1 or keys[key] not in judged_at_kill, (keys[key], count)
    with sqlite3.connect(out / "judgments.sqlite") as db:
        assert {row[0] for row in db.execute("SELECT image FROM images")} == set(images_at_kill)  # none lost
    results = json.loads((out / "results.json").read_text())
    assert (
        results["counts"]["verdicts"] == 2 * (2 + 2 + 3)
        and results["missing_images"] == []
        and results["incomplete_images"] == []
    )


def test_a_malformed_prompt_row_is_named_or_skipped(prompts_file, tmp_path):
    text = prompts_file.read_text().splitlines()
    text[2] = text[2].replace('", ', '" ', 1)  # break the JSON of the second row (index 1)
    prompts_file.write_text("\n".join(text) + "\n")
    stopped = evaluate(prompts_file, tmp_path / "a", "http://127.0.0.1:9/v1", "--judge-only")
    assert (
        stopped.returncode == 2 and "row 2 (line 3, index '1')" in stopped.stderr and "Traceback" not in stopped.stderr
    )


def test_short_names_download_the_official_file_once_into_the_cache(prompts_file, tmp_path, monkeypatch):
    """The real download code against a local HTTP server standing in for the release."""
    import http.server
    import threading

    from flowrl.benchmarks.unigenbench.download import resolve_prompt_file

    served = tmp_path / "release"
    served.mkdir()
    (served / "test_prompts_en.csv").write_bytes(prompts_file.read_bytes())
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLOWRL_UNIGENBENCH_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        path = resolve_prompt_file("en")
        assert (
            path == tmp_path / "cache" / "unigenbench" / "test_prompts_en.csv"
            and path.read_bytes() == prompts_file.read_bytes()
        )
        server.shutdown()
        assert resolve_prompt_file("en") == path  # cached: no second download (the server is gone)
        with pytest.raises(
            ValueError, match=r"could not download the UniGenBench prompt file http://127.0.0.1:\d+/test_prompts_zh.csv"
        ):
            resolve_prompt_file("zh", timeout=2)
    finally:
        server.server_close()
    assert resolve_prompt_file(str(prompts_file)) == prompts_file
    with pytest.raises(ValueError, match="does not exist; give a UniGenBench CSV path or one of"):
        resolve_prompt_file(str(tmp_path / "nope.csv"))


def test_a_rerun_with_other_settings_refuses_unless_asked_to_redo(prompts_file, tmp_path):
    server, url = start_server(SERVER)
    out = tmp_path / "run"
    try:
        assert evaluate(prompts_file, out, url).returncode == 0
        images = sorted((out / "images").glob("*.png"))
        before = {p.name: p.read_bytes() for p in images}
        stored = (out / "judgments.sqlite").read_bytes()
        changed = evaluate(prompts_file, out, url, "--seed", "5")
        assert changed.returncode == 2 and "Traceback" not in changed.stderr
        assert "images made with other settings (seed 0 -> 5)" in changed.stderr and "--regenerate" in changed.stderr
        assert {p.name: p.read_bytes() for p in images} == before and (out / "judgments.sqlite").read_bytes() == stored
        judge = evaluate(prompts_file, out, url, "--judge-model", "another-judge")
        assert judge.returncode == 2 and "verdicts of another judge (judge_model" in judge.stderr
        assert "--rejudge" in judge.stderr
        redone = evaluate(prompts_file, out, url, "--seed", "5", "--regenerate")
        assert redone.returncode == 0, redone.stderr[-2000:]
        assert "6 images drawn (0 already there), 6 judged (0 already judged)" in redone.stdout
        assert {p.name: p.read_bytes() for p in images} != before
        meta = json.loads((out / "results.json").read_text())["meta"]
        assert meta["seed"] == 5 and meta["prompt_file_sha256"] == hashlib.sha256(prompts_file.read_bytes()).hexdigest()
    finally:
        stop_server(server)


def test_judge_only_with_missing_images_exits_non_zero(prompts_file, tmp_path):
    out = tmp_path / "run"
    (out / "images").mkdir(parents=True)
    nothing = evaluate(prompts_file, out, "http://127.0.0.1:9/v1", "--judge-only")
    assert nothing.returncode == 1 and "6 images are missing" in nothing.stderr and "overall is null" in nothing.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["overall"] is None and results["meta"]["missing_images"] == 6
    assert results["meta"]["policy"] == f"images in {out / 'images'}"  # not the default checkpoint's name
    server, url = start_server(SERVER)
    try:
        Image.new("RGB", (16, 16), (240, 240, 240)).save(out / "images" / "0_0.png")
        some = evaluate(prompts_file, out, url, "--judge-only")
    finally:
        stop_server(server)
    assert some.returncode == 1 and "5 images are missing" in some.stderr
    assert json.loads((out / "results.json").read_text())["overall"] is not None


def test_a_judge_that_cannot_answer_stops_the_run_before_any_image_is_drawn(prompts_file, tmp_path):
    server, url = start_server(SERVER)
    try:
        cases = [
            (url, ["--judge-model", "other"], "serves ['test-judge', 'QwenVL', "),
            (url.removesuffix("/v1"), [], "ends in /v1"),
            ("http://127.0.0.1:9/v1", [], "nothing answers at http://127.0.0.1:9/v1"),
        ]
        for n, (address, extra, message) in enumerate(cases):
            done = evaluate(prompts_file, tmp_path / f"run{n}", address, *extra)
            assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert not list((tmp_path / f"run{n}").glob("images/*.png"))
        assert server_requests(url) == 0  # no judging request was sent
    finally:
        stop_server(server)


def server_requests(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as response:
        return json.loads(response.read())["requests"]


def test_an_official_layout_folder_is_judged_in_place(prompts_file, tmp_path):
    folder = tmp_path / "eval_data" / "en" / "some-model"
    folder.mkdir(parents=True)
    for prompt in PROMPTS:
        for k in range(2):
            Image.new("RGB", (16, 16), (30 * k, 200, 90)).save(folder / f"{prompt.index}_{k}.jpg", quality=95)
    server, url = start_server(SERVER)
    try:
        out = tmp_path / "run"
        done = evaluate(prompts_file, out, url, "--judge-only", "--images", str(folder), "--image-suffix", ".jpg")
    finally:
        stop_server(server)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "images").exists() and sorted(p.name for p in folder.iterdir())[0] == "0_0.jpg"
    with open(out / "official_results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and rows[0]["img_path"] == str(folder / "0_0.jpg")
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["images"] == 6 and results["missing_images"] == []
    assert "| Model | Overall |" in done.stdout  # the leaderboard row
    assert "judge: 6 requests, 600 prompt and" in done.stdout  # the stub counts 100 prompt tokens per request
