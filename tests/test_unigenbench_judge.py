"""UniGenBench prompt files, the judgment store and the judge, the last against real
`tests/unigen_judge_server.py` processes on loopback.

The prompt files here are small ones we write ourselves in the official format (quoted JSON in a
CSV cell, English and Chinese column names); no row of the public files is copied. The stand-in
judge answers "yes" for a test point iff (image brightness > 0.5) XOR (sha256(name)[0] is odd), so
every verdict is computed here independently (`expected`) and compared with what the client read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from openai_stub import server_fixture
from PIL import Image

from flowrl.benchmarks.unigenbench.judge import Judge, UnparseableJudgment, parse_answer, read_flag
from flowrl.benchmarks.unigenbench.prompts import (
    PromptFileError,
    PromptFileWarning,
    load_prompts,
    load_prompts_report,
    write_prompts,
)
from flowrl.benchmarks.unigenbench.store import JudgmentStore, StoreError
from flowrl.benchmarks.unigenbench.types import BenchPrompt, Verdict
from flowrl.benchmarks.unigenbench.types import TestPoint as Point  # aliased: pytest would try to collect a Test* class

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "unigen_judge_server.py"

# ---------------------------------------------------------------------------------------------
# Prompt files in the official format, written by hand (JSON quotes doubled inside a quoted cell).

EN_HEADER = "index,prompt_en,sub_dims_en\n"
EN_ROWS = [
    '0,"A red kite above a green hill, drawn in crayon.","{""Primary Categories"": ""Illustration"", ""Secondary Categories"": ""Picture Book"", '
    '""Subjects"": ""Object"", ""Sentence Structure"": ""Descriptive"", ""Testpoints"": [""Attribute - Color"", ""Entity Layout - Two-Dimensional Space"", '
    '""Style""], ""Testpoint Description"": [""a red kite"", ""above a green hill"", ""drawn in crayon""]}"\n',
    '1,Three blue cubes stacked on a table.,"{""Primary Categories"": ""Design"", ""Secondary Categories"": ""Product"", ""Subjects"": ""Object"", '
    '""Sentence Structure"": ""Descriptive"", ""Testpoints"": [""Attribute - Quantity"", ""Attribute - Color""], '
    '""Testpoint Description"": [""Three cubes"", ""blue cubes""]}"\n',
    # index 2: a comma is missing after "Subjects" (the kind of break the public long file has)
    '2,"A lighthouse at dusk, its beam ""sweeping"" the sea.","{""Primary Categories"": ""Art"", ""Secondary Categories"": ""Photography"", '
    '""Subjects"": ""Scene"" ""Sentence Structure"": ""Descriptive"", ""Testpoints"": [""World Knowledge""], ""Testpoint Description"": [""lighthouse""]}"\n',
    '3,"A fox reading a map, the sign says ""NORTH"".","{""Primary Categories"": ""Illustration"", ""Secondary Categories"": ""Content"", '
    '""Subjects"": ""Animal"", ""Sentence Structure"": ""Descriptive"", ""Testpoints"": [""Text Generation"", ""Action - Animal"", ""Logical Reasoning""], '
    '""Testpoint Description"": [""\\""NORTH\\"""", ""reading a map"", """"]}"\n',
]
ZH_FILE = (
    "index,prompt_zh,sub_dims_zh\n"
    '5,一只白色的猫坐在蓝色的椅子上，水彩风格。,"{""一级垂类"": ""艺术"", ""二级垂类"": ""平面艺术"", ""主体"": ""动物"", '
    '""考点"": [""属性-颜色"", ""风格""], ""句式"": ""描述式"", ""考点对应描述"": [""白色的猫，蓝色的椅子"", ""水彩风格""]}"\n'
)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_official_format_en_and_zh(tmp_path):
    path = write_text(tmp_path / "en.csv", EN_HEADER + EN_ROWS[0] + EN_ROWS[1] + EN_ROWS[3])
    prompts = load_prompts(path)
    assert [p.index for p in prompts] == [0, 1, 3]
    first = prompts[0]
    assert first.text == "A red kite above a green hill, drawn in crayon."
    assert (first.theme, first.subtheme, first.subject, first.sentence_structure) == (
        "Illustration",
        "Picture Book",
        "Object",
        "Descriptive",
    )
    assert first.testpoints[1] == Point("Entity Layout - Two-Dimensional Space", "above a green hill")
    assert prompts[2].text == 'A fox reading a map, the sign says "NORTH".'
    assert (
        prompts[2].testpoints[0].description == '"NORTH"' and prompts[2].testpoints[2].description == ""
    )  # an empty description is allowed

    report = load_prompts_report(write_text(tmp_path / "zh.csv", ZH_FILE))
    assert (report.language, report.prompt_column, report.metadata_column) == ("zh", "prompt_zh", "sub_dims_zh")
    (zh,) = report.prompts
    assert (zh.index, zh.theme, zh.subtheme, zh.subject, zh.sentence_structure) == (
        5,
        "艺术",
        "平面艺术",
        "动物",
        "描述式",
    )
    assert zh.testpoints == (Point("属性-颜色", "白色的猫，蓝色的椅子"), Point("风格", "水彩风格"))
    with pytest.raises(PromptFileError, match="lacks the columns prompt_en/sub_dims_en"):
        load_prompts(tmp_path / "zh.csv", language="en")


def test_testpoint_primary_and_sub_dimensions():
    assert (Point("Attribute - Quantity", "").primary, Point("Attribute - Quantity", "").sub) == (
        "Attribute",
        "Attribute - Quantity",
    )
    assert (Point("Style", "").primary, Point("Style", "").sub) == ("Style", "Style")
    assert Point("Action - Hand (Character/Anthropomorphic)", "").primary == "Action"
    assert Point("属性-数量", "").primary == "属性"


def test_broken_json_row_stops_naming_file_and_row(tmp_path):
    path = write_text(tmp_path / "broken.csv", EN_HEADER + "".join(EN_ROWS))
    with pytest.raises(PromptFileError) as caught:
        load_prompts(path, on_error="stop")
    message = str(caught.value)
    assert str(path) in message and "row 3 (line 4, index '2')" in message
    assert "not valid JSON" in message and "Expecting ',' delimiter" in message
    assert isinstance(caught.value, ValueError)


def test_broken_json_row_skip_warns_and_drops_exactly_that_row(tmp_path):
    path = write_text(tmp_path / "broken.csv", EN_HEADER + "".join(EN_ROWS))
    with pytest.warns(PromptFileWarning, match=r"broken\.csv: row 3 \(line 4, index '2'\).*skipped") as caught:
        report = load_prompts_report(path, on_error="skip")
    assert len([w for w in caught if issubclass(w.category, PromptFileWarning)]) == 1
    assert [p.index for p in report.prompts] == [0, 1, 3]
    (skipped,) = report.skipped
    assert (skipped.line, skipped.index) == (4, "2") and "Expecting ',' delimiter" in skipped.reason
    with pytest.warns(PromptFileWarning):
        assert [p.index for p in load_prompts(path, on_error="skip")] == [0, 1, 3]


ROW_ERRORS = {
    "length mismatch": (
        '7,A cat.,"{""Primary Categories"": ""A"", ""Secondary Categories"": ""B"", ""Testpoints"": [""Style"", ""World Knowledge""], '
        '""Testpoint Description"": [""only one""]}"\n',
        "2 test points but 1 descriptions",
    ),
    "empty prompt": (
        '7, ,"{""Primary Categories"": ""A"", ""Secondary Categories"": ""B"", ""Testpoints"": [""Style""], '
        '""Testpoint Description"": [""x""]}"\n',
        "prompt (column 'prompt_en') is empty",
    ),
    "duplicate index": (EN_ROWS[1], "index 1 repeats the row on line 3"),
    "index not an integer": ('x7,A cat.,"{}"\n', "index 'x7' is not an integer"),
    "missing key": (
        '7,A cat.,"{""Primary Categories"": ""A"", ""Testpoints"": [""Style""], ""Testpoint Description"": [""x""]}"\n',
        "no key 'Secondary Categories'",
    ),
    "not an object": ('7,A cat.,"[1, 2]"\n', "must hold a JSON object"),
    "extra field": ('7,A cat.,"{}",surplus\n', "has 4 fields, expected 3"),
}


@pytest.mark.parametrize("case", sorted(ROW_ERRORS))
def test_bad_rows_are_named(tmp_path, case):
    row, expected = ROW_ERRORS[case]
    path = write_text(tmp_path / "bad.csv", EN_HEADER + EN_ROWS[0] + EN_ROWS[1] + row)
    with pytest.raises(PromptFileError, match="bad.csv: row 3 \\(line 4, index") as caught:
        load_prompts(path)
    assert expected in str(caught.value)
    with pytest.warns(PromptFileWarning, match="row 3"):
        assert [p.index for p in load_prompts(path, on_error="skip")] == [0, 1]  # the first of a repeated index is kept


def test_file_level_problems_always_raise(tmp_path):
    with pytest.raises(PromptFileError, match="lacks the columns"):
        load_prompts(write_text(tmp_path / "a.csv", "index,prompt,sub_dims\n0,x,{}\n"), on_error="skip")
    with pytest.raises(PromptFileError, match="no 'index' column"):
        load_prompts(write_text(tmp_path / "b.csv", "id,prompt_en,sub_dims_en\n"))
    with pytest.raises(PromptFileError, match="empty"):
        load_prompts(write_text(tmp_path / "c.csv", ""))
    with pytest.raises(PromptFileError, match="cannot open"):
        load_prompts(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_prompts(tmp_path / "a.csv", on_error="ignore")


def test_line_numbers_count_multiline_prompts(tmp_path):
    multiline = '4,"A poem:\nline two\nline three","{""Primary Categories"": ""A"", ""Secondary Categories"": ""B"", ""Testpoints"": [""Style""], ""Testpoint Description"": [""x""]}"\n'
    path = write_text(tmp_path / "m.csv", EN_HEADER + multiline + "\n" + EN_ROWS[2])
    with pytest.raises(PromptFileError, match=r"row 2 \(line 6, index '2'\)"):
        load_prompts(path)


def test_write_prompts_round_trip(tmp_path):
    prompts = [
        BenchPrompt(
            0,
            'A sign reading "OPEN", with commas, and\na second line',
            "Design",
            "Poster",
            (Point("Text Generation", '"OPEN"'), Point("Style", "")),
            "Object",
            "Imperative",
        ),
        BenchPrompt(
            12,
            "Two owls on a branch.",
            "Art",
            "Painting",
            (Point("Attribute - Quantity", "Two owls"), Point("Attribute - Quantity", "two")),
            "Animal",
            "Descriptive",
        ),
    ]
    path = tmp_path / "out.csv"
    write_prompts(path, prompts)
    assert load_prompts(path) == prompts
    text = path.read_text(encoding="utf-8")
    assert text.startswith("index,prompt_en,sub_dims_en\n")
    assert (
        '""Primary Categories"": ""Design""' in text and '""Testpoint Description""' in text
    )  # JSON quoted the official way
    zh = load_prompts(write_text(tmp_path / "zh.csv", ZH_FILE))
    write_prompts(tmp_path / "zh_out.csv", zh, language="zh")
    assert (tmp_path / "zh_out.csv").read_text(encoding="utf-8") == ZH_FILE  # byte for byte, key order included
    with pytest.raises(ValueError, match="indices must be unique"):
        write_prompts(tmp_path / "dup.csv", [prompts[0], prompts[0]])


# ---------------------------------------------------------------------------------------------
# The store


def verdicts_for(image: str, index: int, count: int) -> list[Verdict]:
    return [Verdict(image, index, f"Attribute - T{i}", i % 2 == 0, f"reason {i}") for i in range(count)]


def test_store_records_reopens_and_reports_missing(tmp_path):
    path = tmp_path / "j.sqlite"
    with JudgmentStore(path) as store:
        store.record("3_0.png", 3, verdicts_for("3_0.png", 3, 3), model="judge-a", raw="answer")
        store.record("3_1.png", 3, verdicts_for("3_1.png", 3, 2), model="judge-a", raw="answer 2")
        with pytest.raises(StoreError, match="'3_0.png' is already recorded"):
            store.record("3_0.png", 3, verdicts_for("3_0.png", 3, 1), model="judge-a", raw="again")
        with pytest.raises(ValueError, match="verdict 0 belongs to image '9_0.png'"):
            store.record("3_2.png", 3, verdicts_for("9_0.png", 3, 2), model="judge-a", raw="x")
    with JudgmentStore(path) as store:
        assert store.done_images() == {"3_0.png", "3_1.png"} and len(store) == 2
        assert store.missing(["3_2.png", "3_1.png", "3_0.png", "3_3.png"]) == ["3_2.png", "3_3.png"]
        assert store.verdicts() == verdicts_for("3_0.png", 3, 3) + verdicts_for("3_1.png", 3, 2)
        assert store.raw_answer("3_1.png") == "answer 2" and store.raw_answer("3_9.png") is None
        (first, _) = store.judgments()
        assert (
            first["model"] == "judge-a"
            and first["raw_sha256"] == hashlib.sha256(b"answer").hexdigest()
            and first["judged_at"] > 0
        )
        store.record("3_0.png", 3, verdicts_for("3_0.png", 3, 1), model="judge-b", raw="again", replace=True)
        assert [v.image for v in store.verdicts()].count("3_0.png") == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_failure_mid_record_leaves_nothing(tmp_path, monkeypatch):
    store = JudgmentStore(tmp_path / "j.sqlite")
    store.record("1_0.png", 1, verdicts_for("1_0.png", 1, 3), model="m", raw="ok")

    def half_then_fail(rows):
        store._conn.execute("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[0])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store, "_insert_verdicts", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        store.record("1_1.png", 1, verdicts_for("1_1.png", 1, 3), model="m", raw="lost")
    monkeypatch.undo()
    assert store.done_images() == {"1_0.png"}
    assert {v.image for v in store.verdicts()} == {"1_0.png"}
    store.record("1_1.png", 1, verdicts_for("1_1.png", 1, 3), model="m", raw="second try")  # the store is still usable
    assert store.done_images() == {"1_0.png", "1_1.png"}


KILL_SCRIPT = """
import os, sys
from flowrl.benchmarks.unigenbench.store import JudgmentStore
from flowrl.benchmarks.unigenbench.types import Verdict
store = JudgmentStore(sys.argv[1])
make = lambda image: [Verdict(image, 7, f"Style {i}", True, "r") for i in range(4)]
store.record("7_0.png", 7, make("7_0.png"), model="m", raw="first")
inserts = []
def trace(statement):
    if statement.startswith("INSERT INTO verdicts"):
        inserts.append(statement)
        if len(inserts) == 3:
            os._exit(9)  # killed with two of the four verdict rows written, before COMMIT
store._conn.set_trace_callback(trace)
store.record("7_1.png", 7, make("7_1.png"), model="m", raw="second")
"""


def test_store_killed_mid_write_keeps_nothing_partial(tmp_path):
    path = tmp_path / "j.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 9, done.stderr
    with JudgmentStore(path) as store:
        assert store.done_images() == {"7_0.png"}
        assert [v.image for v in store.verdicts()] == ["7_0.png"] * 4


def test_store_is_safe_across_threads(tmp_path):
    store = JudgmentStore(tmp_path / "j.sqlite")
    names = [f"{i}_{k}.png" for i in range(25) for k in range(4)]

    def write(chunk):
        for name in chunk:
            store.record(
                name, int(name.split("_")[0]), verdicts_for(name, int(name.split("_")[0]), 3), model="m", raw=name
            )

    threads = [threading.Thread(target=write, args=(names[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.done_images() == set(names) and len(store.verdicts()) == 3 * len(names)


# ---------------------------------------------------------------------------------------------
# The judge against real server processes


start_server = server_fixture(SERVER)  # start_server(*args) -> a running StubServer, stopped afterwards


@pytest.fixture(autouse=True)
def no_ambient_environment(monkeypatch):
    """Tests choose their own key and URL; the caller's environment must not leak in."""
    for name in ("OPENAI_API_KEY", "FLOWRL_JUDGE_URL", "UNIGEN_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)


PROMPTS = [
    BenchPrompt(
        0,
        "A red kite above a green hill.",
        "Illustration",
        "Picture Book",
        (
            Point("Attribute - Color", "a red kite"),
            Point("Entity Layout - Two-Dimensional Space", "above a green hill"),
            Point("Style", ""),
        ),
    ),
    BenchPrompt(
        1,
        "Three blue cubes.",
        "Design",
        "Product",
        (Point("Attribute - Quantity", "Three cubes"), Point("Attribute - Color", "blue")),
    ),
    BenchPrompt(
        2,
        "Two owls, each on a branch.",
        "Art",
        "Painting",  # the same test point twice, as in two public rows
        (
            Point("Attribute - Quantity", "Two owls"),
            Point("Attribute - Quantity", "each on a branch"),
            Point("World Knowledge", "owls"),
            Point("Logical Reasoning", "one per branch"),
        ),
    ),
]


def expected(level: int, name: str) -> bool:
    """The stand-in's rule, computed here on its own: bright XOR odd first hash byte."""
    return (level / 255 > 0.5) != bool(hashlib.sha256(name.encode("utf-8")).digest()[0] % 2)


def make_images(
    folder: Path, prompts: list[BenchPrompt], per_prompt: int = 4
) -> tuple[list[tuple[Path, BenchPrompt]], dict[str, int]]:
    """Solid grey PNGs `{index}_{k}.png`, each a different level (so a different file)."""
    folder.mkdir(parents=True, exist_ok=True)
    items, levels = [], {}
    for n, (prompt, k) in enumerate((p, k) for p in prompts for k in range(per_prompt)):
        level = (37 + 71 * n) % 250 + 3  # varied, never exactly 127.5
        path = folder / f"{prompt.index}_{k}.png"
        Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(path)
        items.append((path, prompt))
        levels[path.name] = level
    return items, levels


def expected_verdicts(
    items: list[tuple[Path, BenchPrompt]], levels: dict[str, int]
) -> list[tuple[str, int, str, bool]]:
    return sorted(
        (path.name, prompt.index, point.name, expected(levels[path.name], point.name))
        for path, prompt in items
        for point in prompt.testpoints
    )


def as_tuples(verdicts: list[Verdict]) -> list[tuple[str, int, str, bool]]:
    return sorted((v.image, v.prompt_index, v.testpoint, v.correct) for v in verdicts)


def key_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_judge_image_verdicts_and_request(start_server, tmp_path, monkeypatch):
    server = start_server("--mode", "normal")
    monkeypatch.setenv("UNIGEN_TEST_KEY", "sekret")
    judge = Judge(base_url=server.url, model="QwenVL", api_key_env="UNIGEN_TEST_KEY", concurrency=1)
    items, levels = make_images(tmp_path / "img", PROMPTS, per_prompt=2)
    for path, prompt in items:
        verdicts, raw = judge.judge_image(path, prompt)
        assert [v.testpoint for v in verdicts] == [p.name for p in prompt.testpoints]
        assert [v.correct for v in verdicts] == [expected(levels[path.name], p.name) for p in prompt.testpoints]
        assert all(v.image == path.name and v.prompt_index == prompt.index and v.explanation for v in verdicts)
        assert json.loads(raw)  # the raw answer comes back as sent
    last = server.stats()["last"]
    assert (last["model"], last["temperature"], last["max_tokens"], last["mime"]) == ("QwenVL", 0.0, None, "image/png")
    assert last["authorization"] == "Bearer sekret"
    assert '1. Attribute - Quantity — "Two owls"' in last["prompt"] and "4. Logical Reasoning" in last["prompt"]
    assert "Two owls, each on a branch." in last["prompt"]


def test_prose_and_fenced_answers_are_parsed(start_server, tmp_path):
    server = start_server("--mode", "prose")
    judge = Judge(base_url=server.url, model="m", concurrency=1)
    items, levels = make_images(tmp_path / "img", PROMPTS, per_prompt=2)  # 6 requests: all five answer formats
    verdicts = [v for path, prompt in items for v in judge.judge_image(path, prompt)[0]]
    assert as_tuples(verdicts) == expected_verdicts(items, levels)
    assert server.stats()["requests"] == len(items)  # every format read at the first answer


def test_parse_answer_formats():
    names = ["Style", "Attribute - Color", "Attribute - Color"]
    assert parse_answer('{"1": "YES", "2": false, "3": {"answer": "Incorrect", "explanation": "grey"}}', names) == {
        0: (True, ""),
        1: (False, ""),
        2: (False, "grey"),
    }
    fenced = 'Sure!\n```json\n{"verdicts": [{"id": 2, "verdict": "no"}, {"id": 1, "verdict": "yes"}, {"id": 3, "score": 1}]}\n```'
    assert {k: v[0] for k, v in parse_answer(fenced, names).items()} == {0: True, 1: False, 2: True}
    lines = "<think>1. Style: no</think>\n1) Style - Yes. looks right\n- 2. Attribute - Color: FALSE - too pale\n3. Attribute - Color: correct"
    assert parse_answer(lines, names) == {0: (True, "looks right"), 1: (False, "too pale"), 2: (True, "")}
    assert {k: v[0] for k, v in parse_answer('["pass", "fail", 1]', names).items()} == {0: True, 1: False, 2: True}
    assert parse_answer('<analysis>["a", "b", "c"]</analysis><score>[0, 1, 1]</score>', names)[0] == (False, "a")
    assert parse_answer('{"Style": "yes", "Attribute - Color": "no"}', names) == {
        0: (True, "")
    }  # a repeated name needs its number
    assert parse_answer("I cannot judge this image.", names) == {}
    assert [
        read_flag(x) for x in ("True", "n", "not satisfied", "satisfied", "0", "符合", "不符合", "maybe", 2, "none")
    ] == [True, False, False, True, False, True, False, None, None, None]


def test_missing_testpoints_are_retried_then_named(start_server, tmp_path):
    server = start_server("--mode", "missing")
    judge = Judge(base_url=server.url, model="m", parse_retries=2)
    items, _ = make_images(tmp_path / "img", PROMPTS[:1], per_prompt=1)
    ((path, prompt),) = items
    with pytest.raises(UnparseableJudgment, match=r"0_0\.png.*test point\(s\) 3 'Style' in 3 answers") as caught:
        judge.judge_image(path, prompt)
    assert caught.value.image == "0_0.png" and caught.value.missing == ["Style"]
    assert server.stats()["requests_per_image"] == {key_of(path): 3}  # asked once, then twice more

    once = start_server("--mode", "missing-once")
    verdicts, _ = Judge(base_url=once.url, model="m", parse_retries=1).judge_image(path, prompt)
    assert len(verdicts) == 3 and once.stats()["requests"] == 2


def test_503s_are_retried(start_server, tmp_path):
    server = start_server("--mode", "flaky", "--fail-first", "2")
    items, levels = make_images(tmp_path / "img", PROMPTS[1:2], per_prompt=1)
    ((path, prompt),) = items
    verdicts, _ = Judge(base_url=server.url, model="m", retries=3, backoff=0.01).judge_image(path, prompt)
    assert [v.correct for v in verdicts] == [expected(levels[path.name], p.name) for p in prompt.testpoints]
    assert server.stats()["requests"] == 3


def test_judge_all_runs_concurrently_and_skips_done_images(start_server, tmp_path):
    server = start_server("--mode", "slow", "--delay", "0.3")
    items, levels = make_images(tmp_path / "img", PROMPTS[:2], per_prompt=4)  # 8 images
    store = JudgmentStore(tmp_path / "j.sqlite")
    report = Judge(base_url=server.url, model="m", concurrency=4).judge_all(items, store, progress=False)
    assert report == {"total": 8, "judged": 8, "skipped": 0, "failed": {}}
    assert server.stats()["max_in_flight"] == 4  # four images judged at once
    assert as_tuples(store.verdicts()) == expected_verdicts(items, levels)
    again = Judge(base_url=server.url, model="m").judge_all(items, store, progress=False)
    assert again == {"total": 8, "judged": 0, "skipped": 8, "failed": {}} and server.stats()["requests"] == 8


def test_one_bad_image_does_not_stop_the_others(start_server, tmp_path):
    server = start_server("--mode", "normal")
    items, _ = make_images(tmp_path / "img", PROMPTS[:1], per_prompt=3)
    items[1][0].write_bytes(b"not an image")
    store = JudgmentStore(tmp_path / "j.sqlite")
    with pytest.warns(RuntimeWarning, match="1 of 3 images failed"):
        report = Judge(base_url=server.url, model="m").judge_all(items, store, progress=False)
    assert report["judged"] == 2 and list(report["failed"]) == ["0_1.png"]
    assert "0_1.png is not a PNG, JPEG or WEBP image" in report["failed"]["0_1.png"]
    assert store.done_images() == {"0_0.png", "0_2.png"}
    with pytest.raises(ValueError, match="named for prompt 0 but paired with prompt 1"):
        Judge(base_url=server.url).judge_all([(items[0][0], PROMPTS[1])], store, progress=False)


def test_resume_after_the_server_dies_mid_judging(start_server, tmp_path):
    items, levels = make_images(tmp_path / "img", PROMPTS, per_prompt=4)  # 12 images
    names = {path.name for path, _ in items}
    key_to_name = {key_of(path): path.name for path, _ in items}
    store_path = tmp_path / "j.sqlite"
    log1, log2 = tmp_path / "log1.jsonl", tmp_path / "log2.jsonl"

    first = start_server("--die-after", "5", "--log", str(log1))
    judge = Judge(base_url=first.url, model="m", concurrency=2, retries=1, backoff=0.01)
    with JudgmentStore(store_path) as store, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report1 = judge.judge_all(items, store, progress=False)
    assert first.proc.wait(timeout=10) == 3  # the server really died mid-request
    assert 1 <= report1["judged"] <= 5 and report1["judged"] + len(report1["failed"]) == 12
    for image, error in report1["failed"].items():
        assert (
            error.startswith("RewardServiceError")
            and f"image {image}" in error
            and f"{first.url}/chat/completions" in error
        )
    assert any("call judge_all again with the same store" in str(w.message) for w in caught)
    answered1 = {key_to_name[json.loads(line)["image"]] for line in log1.read_text().splitlines()}
    with JudgmentStore(store_path) as store:  # reopened, as a new process would
        done1 = store.done_images()
    assert answered1 <= done1 and len(done1) == report1["judged"]  # every answer that was sent is in the store

    second = start_server("--log", str(log2))
    with JudgmentStore(store_path) as store:
        report2 = Judge(base_url=second.url, model="m", concurrency=2).judge_all(items, store, progress=False)
        assert report2 == {"total": 12, "judged": 12 - len(done1), "skipped": len(done1), "failed": {}}
        asked2 = {key_to_name[key]: count for key, count in second.stats()["requests_per_image"].items()}
        assert set(asked2) == names - done1 and set(asked2.values()) == {1}  # only the missing images, each once
        answered2 = [key_to_name[json.loads(line)["image"]] for line in log2.read_text().splitlines()]
        assert not set(answered2) & answered1 and len(answered2) == len(
            set(answered2)
        )  # no image judged twice across runs
        assert store.done_images() == names
        assert as_tuples(store.verdicts()) == expected_verdicts(items, levels)  # complete, nothing lost or doubled


def test_chinese_prompts(start_server, tmp_path):
    server = start_server("--mode", "normal")
    (prompt,) = load_prompts(write_text(tmp_path / "zh.csv", ZH_FILE))
    items, levels = make_images(tmp_path / "img", [prompt], per_prompt=2)
    judge = Judge(base_url=server.url, model="m", language="zh")
    for path, _ in items:
        verdicts, _ = judge.judge_image(path, prompt)
        assert [(v.testpoint, v.correct) for v in verdicts] == [
            (p.name, expected(levels[path.name], p.name)) for p in prompt.testpoints
        ]
    sent = server.stats()["last"]["prompt"]
    assert "考点" in sent and '1. 属性-颜色 — "白色的猫，蓝色的椅子"' in sent


def test_judge_options_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="base_url 'localhost:8000'"):
        Judge(base_url="localhost:8000")
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        Judge(concurrency=0)
    with pytest.raises(ValueError, match="language must be one of"):
        Judge(language="fr")
    with pytest.raises(ValueError, match=r"\{testpoints\}"):
        Judge(instruction="Judge {prompt}")
    monkeypatch.setenv("FLOWRL_JUDGE_URL", "http://judge.example:9000/v1/")
    assert Judge().endpoint == "http://judge.example:9000/v1/chat/completions"


def test_the_known_defect_of_the_english_long_file_is_repaired_on_request(tmp_path):
    meta = (
        '"{""Primary Categories"": ""Art"", ""Secondary Categories"": ""Other"", ""Testpoints"": '
        '[""Grammar - Negation"" ""Attribute - Color""], ""Testpoint Description"": [""no hat"", ""red""]}"'
    )
    path = write_text(tmp_path / "long.csv", f"index,prompt_en,sub_dims_en\n509,a red cat without a hat,{meta}\n")
    with pytest.raises(PromptFileError, match="index '509'"):
        load_prompts(path)
    report = load_prompts_report(path, on_error="fix")
    assert [t.name for t in report.prompts[0].testpoints] == ["Grammar - Negation", "Attribute - Color"]
    assert report.fixed == ["index 509: '\"Grammar - Negation\" \"Attribute - Color\"' -> "
                            "'\"Grammar - Negation\", \"Attribute - Color\"'"]  # fmt: skip
    other = write_text(tmp_path / "other.csv", "index,prompt_en,sub_dims_en\n" + meta.join(["508,x,", "\n"]))
    with pytest.raises(PromptFileError, match="index '508'"):
        load_prompts(other, on_error="fix")  # only the known row is repaired


def test_requests_per_minute_spaces_the_request_starts(monkeypatch):
    from flowrl.benchmarks.unigenbench import judge as judge_module

    clock = {"now": 100.0, "slept": []}
    monkeypatch.setattr(judge_module.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(judge_module.time, "sleep", lambda s: clock["slept"].append(s))
    monkeypatch.setattr(judge_module, "post_with_retries", lambda *a, **k: None)
    judge = Judge(base_url="http://127.0.0.1:9/v1", requests_per_minute=30)  # one start every 2 s
    for _ in range(3):
        judge._post({}, "x.png")
    assert clock["slept"] == [0.0, 2.0, 4.0]  # all asked at once: they start 0, 2 and 4 s later
    with pytest.raises(ValueError, match="requests_per_minute must be positive"):
        Judge(base_url="http://127.0.0.1:9/v1", requests_per_minute=0)
