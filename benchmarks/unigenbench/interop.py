"""The official evaluation's per-image results file, written from our store and read back, so that
official and our judgments can be compared image by image. Its columns, in order: index, prompt,
testpoint (the Python list of names), output (the raw answer), result_json (the prompt, test
points, analysis and 0/1 scores as indented JSON) and img_path."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

from .types import BenchPrompt, Verdict

COLUMNS = ("index", "prompt", "testpoint", "output", "result_json", "img_path")


def write_official_results(path: Path, prompts: list[BenchPrompt], verdicts: list[Verdict], store, image_dir: Path):
    """One row per judged image, in prompt and image order, in the official columns."""
    by_image: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        by_image.setdefault(verdict.image, []).append(verdict)
    by_index = {p.index: p for p in prompts}
    order = sorted(by_image, key=lambda name: tuple(int(part) for part in Path(name).stem.split("_")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for name in order:
            prompt = by_index[by_image[name][0].prompt_index]
            names = [point.name for point in prompt.testpoints]
            judged = {v.testpoint: v for v in by_image[name]}
            result = {
                "prompt": prompt.text,
                "testpoint": names,
                "analysis": [judged[n].explanation for n in names],
                "score": [int(judged[n].correct) for n in names],
            }
            writer.writerow(
                [
                    str(prompt.index),
                    prompt.text,
                    str(names),
                    store.raw_answer(name) or "",
                    json.dumps(result, ensure_ascii=False, indent=4),
                    str(image_dir / name),
                ]
            )
    return path


def read_official_results(path: str | Path) -> list[Verdict]:
    """The verdicts of an official per-image results CSV (rows whose result does not parse are
    skipped, as the official scorer skips them); a point is right when its score == 1."""
    verdicts = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("index", "testpoint", "result_json", "img_path") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not an official UniGenBench results file: no columns {missing}")
        for row in reader:
            try:
                names = ast.literal_eval(row["testpoint"])
                result = ast.literal_eval(row["result_json"])
                scores, reasons = result["score"], result.get("analysis") or [""] * len(names)
            except (ValueError, SyntaxError, TypeError, KeyError):
                continue
            image = Path(row["img_path"]).name
            verdicts.extend(
                Verdict(image, int(row["index"]), name, score == 1, str(reason))
                for name, score, reason in zip(names, scores, reasons, strict=False)
            )
    return verdicts
