"""Writing a pretrained model into the installed package (`--ship`): refused for a model that
cannot be right (no training steps, non-finite weights), and the model it replaces is kept."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from .run_files import replace_directory


def backup_dir() -> Path:
    return Path(os.environ.get("FLOWRL_CACHE", Path.home() / ".cache" / "flowrl")) / "shipped_backups"


def check_shippable(source: Path, steps: int) -> None:
    """Refuse a model trained for no step or holding non-finite weights, naming why."""
    if steps < 1:
        raise ValueError(f"--ship: {source} was trained for {steps} steps; nothing to ship (the shipped model stays)")
    files = sorted(source.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"--ship: {source} holds no .safetensors weights")
    for path in files:
        broken = [name for name, tensor in load_file(str(path)).items() if not bool(tensor.isfinite().all())]
        if broken:
            raise ValueError(f"--ship: {path} has non-finite weights ({broken[:3]}); the shipped model stays")


def ship(source: Path, shipped: Path, steps: int) -> Path | None:
    """Replace the shipped model folder with `source` after `check_shippable`; the folder it
    replaces is copied to the cache first. Returns that backup (None when nothing was shipped before)."""
    check_shippable(source, steps)
    backup = None
    if shipped.exists():
        backup = backup_dir() / f"{shipped.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shipped, backup)
    staging = shipped.with_name(shipped.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    replace_directory(staging, shipped)
    print(
        f"shipped {source} to {shipped}" + (f"; the model it replaced is in {backup}" if backup else ""),
        file=sys.stderr,
    )
    return backup
