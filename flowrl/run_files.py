"""What a training run leaves on disk: metrics.jsonl, the reward curve, and atomic checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per iteration, flushed and fsynced so a crash loses at most the current line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_metrics(path: Path, records: list[dict]) -> None:
    """Replace the file's records: written to a temporary file and renamed over the old one, so
    a crash, or a reader, never sees it emptied. Only one process may call it (rank 0): two
    would race on the rename."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def truncate_metrics(path: Path, iterations_done: int, key: str = "iteration") -> None:
    """Keep only the records whose `key` is at most `iterations_done` (a resume redoes the rest)."""
    if path.is_file():
        rewrite_metrics(path, [r for r in read_metrics(path) if r.get(key, -1) <= iterations_done])


def complete_record(path: Path, iteration: int, values: dict[str, Any]) -> dict[str, Any]:
    """Add `values` to the record of `iteration` (an evaluation redone after it failed); returns it."""
    records = read_metrics(path)
    matching = [r for r in records if r.get("iteration") == iteration]
    if not matching:
        raise ValueError(f"{path} has no record of iteration {iteration} to complete")
    matching[-1].update(values)
    rewrite_metrics(path, records)
    return matching[-1]


def write_config(out: Path, values: dict[str, Any]) -> None:
    """out/config.json: the run's whole config (what `flowrl eval --checkpoint RUN` reads the base model from)."""
    (out / "config.json").write_text(json.dumps(values, indent=2))


def finish_run_files(out: Path) -> dict[str, Any]:
    """Draw out/reward_curve.png from out/metrics.jsonl and, when the run evaluated its start and
    later, out/before_after.png; returns the last record with an evaluation."""
    records = read_metrics(out / "metrics.jsonl")
    eval_key = "eval/overall" if any("eval/overall" in r for r in records) else "eval/reward"
    draw_curve(records, out / "reward_curve.png", eval_key=eval_key)
    grids = sorted((out / "samples").glob("iter_*.png")) if (out / "samples").is_dir() else []
    if len(grids) >= 2 and grids[0].name == "iter_00000.png":
        iteration = int(grids[-1].stem.split("_")[1])
        labels = ("the starting model (iteration 0)", f"after training (iteration {iteration})")
        stack_images(grids[0], grids[-1], labels, out / "before_after.png")
    return next((r for r in reversed(records) if eval_key in r), {})


def stack_images(top: Path, bottom: Path, labels: tuple[str, str], path: Path) -> Path:
    """Two images of the same prompts and noise one above the other, each under its label."""
    band = 18
    upper, lower = Image.open(top).convert("RGB"), Image.open(bottom).convert("RGB")
    width = max(upper.width, lower.width)
    sheet = Image.new("RGB", (width, 2 * band + upper.height + lower.height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), labels[0], fill="black")
    sheet.paste(upper, (0, band))
    draw.text((4, band + upper.height + 3), labels[1], fill="black")
    sheet.paste(lower, (0, 2 * band + upper.height))
    sheet.save(path)
    return path


SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x_max: float, lo: float, hi: float):
    """Axes with five labelled ticks on each inside box (left, top, right, bottom); returns the
    map from (iteration, value) to pixels."""
    left, top, right, bottom = box

    def scale(i: float, v: float) -> tuple[float, float]:
        return left + (right - left) * i / (x_max or 1), bottom - (bottom - top) * (v - lo) / (hi - lo or 1)

    draw.line([(left, bottom), (right, bottom)], fill="black")
    draw.line([(left, top), (left, bottom)], fill="black")
    for k in range(5):  # ticks: five levels of each axis
        value = lo + (hi - lo) * k / 4
        _, y = scale(0, value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.line([(left + 1, y), (right, y)], fill=(230, 230, 230))
        draw.text((4, y - 5), f"{value:.{3 if hi - lo < 0.1 else 2}f}", fill="black")
        iteration = round(x_max * k / 4)
        x, _ = scale(iteration, lo)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 3 * len(str(iteration)), bottom + 6), str(iteration), fill="black")
    return scale


def _polyline(draw: ImageDraw.ImageDraw, scale, points: list[tuple[float, float]], colour) -> None:
    draw.line([scale(*p) for p in points] if len(points) > 1 else [scale(*points[0])] * 2, fill=colour, width=2)


def draw_curve(records: list[dict], path: Path, key: str = "reward/mean", eval_key: str = "eval/overall") -> Path:
    """A PNG of the training reward per iteration (blue line) and the evaluations (red dots), with
    labelled ticks on both axes."""
    width, height, left, right, top, bottom = 640, 360, 56, 16, 28, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [(r["iteration"], r[key]) for r in records if key in r]
    evals = [(r["iteration"], r[eval_key]) for r in records if eval_key in r]
    values = [v for _, v in points + evals]
    if points:
        x_max = max(1, max(i for i, _ in points + evals))
        lo, hi = min(values + [0.0]), max(values + [1.0])
        scale = _panel(draw, (left, top, width - right, height - bottom), x_max, lo, hi)
        draw.text((width // 2 - 24, height - 14), "iteration", fill="black")
        _polyline(draw, scale, points, "blue")
        for i, v in evals:
            x, y = scale(i, v)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="red")
        draw.text((left, 8), f"{key} (blue line), {eval_key} (red dots)", fill="black")
    image.save(path)
    return path


def line_chart(path: Path, title: str, *panels: dict[str, list[tuple[float, float]]]) -> Path:
    """A PNG of one or more stacked panels sharing the iteration axis, each a line per named series
    (the same colour for a name in every panel), with a legend and labelled ticks."""
    width, panel_height, left, right = 640, 240, 56, 16
    image = Image.new("RGB", (width, 36 + len(panels) * panel_height), "white")
    draw = ImageDraw.Draw(image)
    names = list(dict.fromkeys(name for panel in panels for name in panel))
    colours = {name: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, name in enumerate(names)}
    draw.text((left, 6), title, fill="black")
    for i, name in enumerate(names):
        draw.text((left + 110 * i, 20), f"-- {name}", fill=colours[name])
    x_max = max([1] + [x for panel in panels for series in panel.values() for x, _ in series])
    for index, panel in enumerate(panels):
        values = [v for series in panel.values() for _, v in series]
        if not values:
            continue
        lo, hi = min(values), max(values)
        margin = (hi - lo) * 0.1 or 0.05
        top = 36 + index * panel_height + 10
        scale = _panel(draw, (left, top, width - right, top + panel_height - 46), x_max, lo - margin, hi + margin)
        for name, series in panel.items():
            if series:
                _polyline(draw, scale, series, colours[name])
    draw.text((width // 2 - 24, image.height - 14), "iteration", fill="black")
    image.save(path)
    return path


def lock_run_directory(directory: Path, option: str) -> IO[str] | None:
    """Hold an exclusive lock on `directory`/.lock until the returned file is closed or the
    process ends (a crash included), so that two runs never write into one directory at once.
    Taken by another process: a ValueError naming it and `option`, the setting that picks the
    directory. None where the platform lacks fcntl (Windows), which goes unguarded."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(directory / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        if holder == str(os.getpid()):
            holder += ", this one: a run started here has not ended (a Trainer's close() frees it)"
        raise ValueError(
            f"{directory} is in use by another run (process {holder}); wait for it to finish, or give this one "
            f"another {option}"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def forget_earlier_run(directory: Path) -> list[str]:
    """Remove what an earlier run left in `directory` that a fresh start would otherwise mix with
    its own (metrics, checkpoint, evaluation samples, curve); returns the names removed."""
    removed = []
    for name in (
        "metrics.jsonl",
        "checkpoint",
        "checkpoint.old",
        "checkpoint.tmp",
        "checkpoints",
        "checkpoint.damaged",
        "samples",
        "reward_curve.png",
    ):
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (a checkpoint is data, loaded without pickle)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


MANIFEST = "manifest.json"


def save_checkpoint(
    directory: Path,
    weights: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    state: dict,
    keep: int = 1,
) -> Path:
    """Write weights (safetensors), EMA and the rest (optimizer, RNG, iteration) with a manifest of
    their sha256 to a temporary directory, then swap it in: an interrupted save never damages the
    previous checkpoint. keep > 1: the previous one moves to checkpoints/iter_NNNNN (the newest
    keep - 1 of those stay), so a checkpoint damaged later still leaves an earlier one."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    files = {path.name: file_sha256(path) for path in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"iteration": int(state.get("iteration", 0)), "files": files}, indent=1))
    previous = json.loads((directory / MANIFEST).read_text())["iteration"] if (directory / MANIFEST).is_file() else None
    if keep > 1 and previous is not None and previous != int(state.get("iteration", 0)):  # not a re-save
        archive = directory.parent / "checkpoints"
        archive.mkdir(exist_ok=True)
        iteration = previous
        target = archive / f"iter_{iteration:05d}"
        shutil.rmtree(target, ignore_errors=True)
        directory.rename(target)  # a crash before the swap below resumes from here
        for old in archived_checkpoints(directory.parent)[keep - 1 :]:
            shutil.rmtree(old, ignore_errors=True)
    replace_directory(tmp, directory)
    return directory


def archived_checkpoints(out: Path) -> list[Path]:
    """The earlier checkpoints kept in out/checkpoints, newest first."""
    archive = out / "checkpoints"
    if not archive.is_dir():
        return []
    return sorted((p for p in archive.glob("iter_*") if p.name[len("iter_") :].isdigit()), reverse=True)


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(directory: Path) -> None:
    """Raise ValueError naming the first file of a checkpoint that is missing or differs from its
    manifest (a checkpoint without a manifest, written by an older flowrl, is not checked)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{manifest} is not a readable checkpoint manifest") from None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if file_sha256(path) != digest:
            raise ValueError(f"{path} differs from its manifest (damaged or altered)")


def umask_modes(directory: Path) -> None:
    """Give every file under `directory` the mode the umask gives new files (safetensors writes
    its files 0600, everything else 0644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~mask)


def replace_directory(new: Path, directory: Path) -> None:
    """Swap a finished directory in for `directory` (the old one moved aside first, then removed);
    its files get the umask's mode first."""
    umask_modes(new)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    new.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    weights = load_file(str(directory / "trainable.safetensors"))
    ema = load_file(str(directory / "ema.safetensors")) if (directory / "ema.safetensors").is_file() else None
    try:  # tensors and plain values only: a run folder from someone else cannot run code here
        state = torch.load(directory / "state.pt", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{directory / 'state.pt'} holds more than tensors and plain values, which flowrl does not load "
            f"(a run folder is data, not code); it was not written by this flowrl, or was altered ({str(error)[:200]})"
        ) from None
    return weights, ema, state
