"""The official prompt files by short name, fetched from the UniGenBench release when the machine
is online and cached, so `flowrl eval unigenbench en` works without a manual download."""

from __future__ import annotations

import os
from pathlib import Path

RELEASE_URL = "https://raw.githubusercontent.com/CodeGoat24/UniGenBench/main/data"
URL_ENV = "FLOWRL_UNIGENBENCH_URL"  # another mirror of the data/ folder
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

    url = f"{os.environ.get(URL_ENV, RELEASE_URL).rstrip('/')}/{FILES[name]}"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as error:
        raise ValueError(
            f"could not download the UniGenBench prompt file {url} ({type(error).__name__}: {error}); "
            f"download it yourself and pass its path"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(response.content)
    os.replace(partial, target)
    return target
