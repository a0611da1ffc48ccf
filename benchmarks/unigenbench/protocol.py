"""UniGenBench's official judging protocol: the request its evaluation models were fine-tuned on
and its answer rule. The template and the sub-dimension definitions are the benchmark authors'
text, so they are not part of this project: `download_protocol` fetches the official evaluation
module from a pinned commit, checks its hash, and reads those values with `ast` (never running
it) into the local cache; `OfficialProtocol` renders requests and reads answers from that copy.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from .download import COMMIT, cache_dir

REPOSITORY = "CodeGoat24/UniGenBench"
SOURCE = "eval/src/eval_common.py"
SOURCE_SHA256 = "c26c91cc65be7ed4234f07a310eed8812888c83b8b83b1934b77b1f48c463eb9"
URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{SOURCE}"
CACHE_NAME = "official_protocol.json"
# The names of the module's top-level values the protocol needs, per language.
VALUES = {
    "en": ("SYSTEM_PROMPT_EN_TEMPLATE", "EXPLANATION_DICT_EN"),
    "zh": ("SYSTEM_PROMPT_ZH_TEMPLATE", "EXPLANATION_DICT_ZH"),
}
HEADERS = ("checkpoint_header", "checkpoint_desc_header")  # per-language strings inside LANG_CONFIGS
FIELDS = {"prompt", "testpoint", "explanation", "test_explanation"}
SERVED_MODEL = "QwenVL"  # the name the official vLLM script serves the evaluation model under
MAX_TOKENS = 4096
ANSWERS = 11  # the official client asks up to this many times while an answer does not parse
_ANALYSIS = re.compile(r"<analysis>(.*?)</analysis>", re.DOTALL)
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)


def extract_protocol(source: str) -> dict:
    """The templates, definitions and headers of the official evaluation module's source, read
    from its syntax tree: literal values only, nothing executed."""
    tree = ast.parse(source)
    assigned = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }
    languages = {}
    configs = assigned.get("LANG_CONFIGS")
    if not isinstance(configs, ast.Dict):
        raise ValueError(f"{SOURCE}: no LANG_CONFIGS dictionary at the top level")
    for language, (template_name, definitions_name) in VALUES.items():
        missing = [name for name in (template_name, definitions_name) if name not in assigned]
        if missing:
            raise ValueError(f"{SOURCE}: no top-level {missing}")
        try:
            template = ast.literal_eval(assigned[template_name])
            definitions = ast.literal_eval(assigned[definitions_name])
        except ValueError:
            raise ValueError(f"{SOURCE}: {template_name} or {definitions_name} is not a literal") from None
        if not isinstance(template, str) or not isinstance(definitions, dict):
            raise ValueError(f"{SOURCE}: {template_name} is not a string or {definitions_name} not a dictionary")
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        if fields != FIELDS:
            raise ValueError(f"{SOURCE}: {template_name} has the fields {sorted(fields)}, expected {sorted(FIELDS)}")
        config = next(
            (v for k, v in zip(configs.keys, configs.values, strict=True) if ast.literal_eval(k) == language), None
        )
        if not isinstance(config, ast.Dict):
            raise ValueError(f"{SOURCE}: LANG_CONFIGS has no {language!r} entry")
        entries = {ast.literal_eval(k): v for k, v in zip(config.keys, config.values, strict=True)}
        headers = {}
        for key in HEADERS:
            if not isinstance(entries.get(key), ast.Constant) or not isinstance(entries[key].value, str):
                raise ValueError(f"{SOURCE}: LANG_CONFIGS[{language!r}][{key!r}] is not a string literal")
            headers[key] = entries[key].value
        languages[language] = {"template": template, "definitions": definitions, **headers}
    return languages


def download_protocol(timeout: float = 60.0, url: str | None = None) -> Path:
    """Fetch the pinned official module, check its sha256, extract the protocol into the cache."""
    from flowrl.rewards.http import fetch_pinned

    url = url or URL
    content = fetch_pinned(url, SOURCE_SHA256, timeout)
    digest = hashlib.sha256(content).hexdigest()
    languages = extract_protocol(content.decode("utf-8"))
    target = cache_dir() / CACHE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"repository": REPOSITORY, "commit": COMMIT, "source": SOURCE, "sha256": digest, "languages": languages}
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(record, ensure_ascii=False, indent=1))
    os.replace(partial, target)
    return target


@dataclass(frozen=True)
class OfficialProtocol:
    """The official request text and answer rule of one language."""

    template: str
    definitions: dict
    checkpoint_header: str
    checkpoint_desc_header: str
    language: str = "en"
    fingerprint: str = ""  # the sha256 of the source it came from (stored with every run)

    @classmethod
    def load(cls, language: str, path: str | os.PathLike | None = None) -> OfficialProtocol:
        """The cached protocol (from `flowrl eval unigenbench-protocol`)."""
        path = Path(path) if path is not None else cache_dir() / CACHE_NAME
        if not path.is_file():
            raise ValueError(
                f"the official UniGenBench judging protocol is not in {path}: run `flowrl eval "
                "unigenbench-protocol` once (it fetches the template from the official repository), or pass --protocol flowrl"
            )
        record = json.loads(path.read_text())
        if language not in record["languages"]:
            raise ValueError(f"{path} has no {language!r} protocol; it has {sorted(record['languages'])}")
        return cls(**record["languages"][language], language=language, fingerprint=record.get("sha256", ""))

    def render(self, prompt: str, names: list[str], descriptions: list[str]) -> str:
        """The request text for one prompt: the template with the test point names as a Python
        list, their definitions and their descriptions, each block in corner brackets."""
        unknown = [name for name in names if name not in self.definitions]
        if unknown:
            raise ValueError(f"test points {unknown} have no definition in the official protocol")
        explanation = f"{self.checkpoint_header}:\u300c" + "".join(
            f"\n{name}: {self.definitions[name]}" for name in names
        )
        described = f"{self.checkpoint_desc_header}:\u300c" + "".join(
            f"\n{name}: {text}" for name, text in zip(names, descriptions, strict=True)
        )
        return self.template.format(
            prompt=prompt,
            testpoint=list(names),
            explanation=explanation + "\n\u300d",
            test_explanation=described + "\n\u300d",
        )


def parse_official(text: str, count: int) -> list[tuple[bool, str]] | None:
    """[(correct, reason)] per test point from an official answer, or None when it does not parse:
    the first <analysis> and <score> lists read as Python literals, one entry per test point;
    a point is right when its score == 1 (so the string '1' is not); a boolean score fails the
    answer (the official scorer drops such images)."""
    if not isinstance(text, str):
        return None
    analysis, score = _ANALYSIS.search(text), _SCORE.search(text)
    if analysis is None or score is None:
        return None
    try:
        reasons = ast.literal_eval(analysis.group(1).strip())
        scores = ast.literal_eval(score.group(1).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(reasons, list | tuple) or not isinstance(scores, list | tuple):
        return None
    if not len(reasons) == len(scores) == count or any(isinstance(s, bool) for s in scores):
        return None
    return [(s == 1, str(r)) for s, r in zip(scores, reasons, strict=True)]


def official_image_url(path: str | os.PathLike) -> str:
    """The image as the official client sends it: RGB, re-encoded as JPEG at quality 95."""
    import base64

    from PIL import Image

    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("utf-8")
