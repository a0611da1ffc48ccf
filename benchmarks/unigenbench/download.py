"""The official prompt files by short name, fetched from the UniGenBench release when the machine
is online and cached, so `flowrl eval unigenbench en` works without a manual download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "49d0bcebb0b9418d975d3957c2fee10f34811d14"  # the official repository, pinned (2026-06)
RELEASE_URL = f"https://raw.githubusercontent.com/CodeGoat24/UniGenBench/{COMMIT}/data"
URL_ENV = "FLOWRL_UNIGENBENCH_URL"  # another mirror of the data/ folder (its files are not hash-checked)
# sha256 of each file at COMMIT. Its English short file has 109 "Logical Reasoning" test points;
# Pref-GRPO's copy has 110 (one more, at index 428), the count the leaderboard's figures fit.
SHA256 = {
    "test_prompts_en.csv": "f82e8ce854985ef963378eaaf8ce12f2e3a57dd6f53e1aea84a61fbeadfe4459",
    "test_prompts_en_long.csv": "5d2c3d642cc4923504b662ad15b425c2d161a137884701881e00c2691a697253",
    "test_prompts_zh.csv": "7ff2d2131e68e6182f43a28ecf03d070f7735788f3c5420db3f83141492e8cb3",
    "test_prompts_zh_long.csv": "6e281a5781878584db932a3bfd16dc51afb195566eb7a30c17fb9c09fd3b1776",
}
FILES = {
    "en": "test_prompts_en.csv",
    "en_long": "test_prompts_en_long.csv",
    "zh": "test_prompts_zh.csv",
    "zh_long": "test_prompts_zh_long.csv",
}


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWRL_CACHE", Path.home() / ".cache" / "flowrl")) / "unigenbench"


def resolve_prompt_file(name: str, timeout: float = 60.0) -> Path:
    """A prompt file path as given, or for a short name (en, en_long, zh, zh_long) the cached
    official file, downloaded first if needed; fails saying where to get it when offline."""
    path = Path(name).expanduser()
    if path.is_file() or name not in FILES:
        if not path.is_file():
            raise ValueError(
                f"prompt file {name!r} does not exist; give a UniGenBench CSV path or one of {sorted(FILES)} to download the official file"
            )
        return path
    target = cache_dir() / FILES[name]
    if target.is_file():
        return target
    import requests

    mirror = os.environ.get(URL_ENV)
    url = f"{(mirror or RELEASE_URL).rstrip('/')}/{FILES[name]}"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as error:
        raise ValueError(
            f"could not download the UniGenBench prompt file {url} ({type(error).__name__}: {error}); "
            f"download it yourself and pass its path"
        ) from None
    digest = hashlib.sha256(response.content).hexdigest()
    if mirror is None and digest != SHA256[FILES[name]]:
        raise ValueError(f"{url} has sha256 {digest}, expected {SHA256[FILES[name]]}: not the pinned file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(response.content)
    os.replace(partial, target)
    return target
