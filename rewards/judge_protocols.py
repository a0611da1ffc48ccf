"""Named protocols of the pairwise VLM judge: another project's exact request and answer rule.

`pref_grpo` is how Pref-GRPO (arXiv 2508.20751) asks UnifiedReward-Think today, `pref_grpo_v1`
how its paper-era code did, `unifiedreward_think` how UnifiedReward's own Qwen3-VL inference script
asks it (the same request, its own template). The templates are other projects' text, so they are
not part of flowrl: `download_judge_protocol` fetches the file from a pinned commit, checks its sha256, reads
the template from its syntax tree (never running it), checks the template's own sha256, and
caches it; `load_judge_protocol` reads the cache.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "CodeGoat24/Pref-GRPO"  # the presets' repository unless one names its own
# name -> where the template lives and how the request is made. `find`: ("function", NAME) for a
# top-level function returning a string literal, or ("assign", NAME) for a top-level assignment of
# a string literal or of an f-string whose only field is {prompt}.
PRESETS: dict[str, dict] = {
    "pref_grpo": {
        "commit": "3e787f6dd5a3051b40d61f07e9578468ac26130a",
        "path": "fastvideo/rewards/templates.py",
        "file_sha256": "e67cd7b04da217f01009de5d0e172218cd8f7dc230ff73441784f412f9e4a932",
        "find": ("function", "get_unifiedreward_think_image_template"),
        "template_sha256": "a8a0d80818246406b783d5cca630336c5fdf1264fef13f09d09bd94d61a139d5",
        "max_tokens": 4096,
        "do_sample": False,  # sent as Pref-GRPO's client sends it (vLLM ignores it)
        "judge": "CodeGoat24/UnifiedReward-Think-qwen3vl-8b",
    },
    "pref_grpo_v1": {
        "commit": "6d405e80e680affefd41aff0b846a95acbf512d3",
        "path": "fastvideo/train_flux_pref_grpo.py",
        "file_sha256": "4ecebc240f4726420a985191149f4917feae603a1d0c291635b9c9066d463903",
        "find": ("assign", "template"),
        "template_sha256": "342f6a4bd0efdae0ca754259d78404e534aae5f1c5527dd47f6062028305e3ff",
        "max_tokens": 2048,
        "do_sample": None,  # not sent
        "judge": "CodeGoat24/UnifiedReward-Think-qwen-7b",
    },
    "unifiedreward_think": {
        "repository": "CodeGoat24/UnifiedReward",
        "commit": "ff6f520247a2d36e2aff7b2ba53a935afd437f66",
        "path": "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_generation.py",
        "file_sha256": "bffcd30e553292ec3c0a09e3e9ce047704f5de9071314620fb79a9c89c66c902",
        "find": ("assign", "problem"),
        "template_sha256": "a8a0d80818246406b783d5cca630336c5fdf1264fef13f09d09bd94d61a139d5",  # = pref_grpo's text
        "max_tokens": 4096,
        "do_sample": False,  # its vllm_request client sends these, with model "UnifiedReward"
        "judge": "CodeGoat24/UnifiedReward-Think-qwen3vl-8b",
    },
}
SERVED_MODEL = "UnifiedReward"  # the --served-model-name of Pref-GRPO's vLLM scripts
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def cache_path(name: str) -> Path:
    root = Path(os.environ.get("FLOWRL_CACHE", Path.home() / ".cache" / "flowrl"))
    return root / "judge_protocols" / f"{name}.json"


def extract_template(source: str, find: tuple[str, str]) -> str:
    """The template string of a module's source, read from its syntax tree (nothing runs)."""
    kind, name = find
    tree = ast.parse(source)
    for node in tree.body:
        if kind == "function" and isinstance(node, ast.FunctionDef) and node.name == name:
            returns = [n for n in node.body if isinstance(n, ast.Return)]
            if len(node.body) != 1 or len(returns) != 1:
                raise ValueError(f"{name}() is not a single return of a string literal")
            value = returns[0].value
            break
        if (
            kind == "assign"
            and isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
        ):
            value = node.value
            break
    else:
        raise ValueError(f"no top-level {'function' if kind == 'function' else 'assignment'} {name!r}")
    if isinstance(value, ast.JoinedStr):
        return template_of_fstring(value, name)
    try:
        template = ast.literal_eval(value)
    except ValueError:
        raise ValueError(f"{name} is not a string literal or an f-string of {{prompt}} (an expression)") from None
    if not isinstance(template, str):
        raise ValueError(f"{name} is not a string")
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    if fields != {"prompt"}:
        raise ValueError(f"{name} has the fields {sorted(fields)}, expected just {{prompt}}")
    return template


def template_of_fstring(node: ast.JoinedStr, name: str) -> str:
    """The format template an f-string stands for, read from its syntax tree: its text with every
    `{prompt}` kept as a field (and literal braces doubled); any other field is refused."""
    parts = []
    for piece in node.values:
        if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
            parts.append(piece.value.replace("{", "{{").replace("}", "}}"))
        elif (
            isinstance(piece, ast.FormattedValue)
            and isinstance(piece.value, ast.Name)
            and piece.value.id == "prompt"
            and piece.conversion == -1
            and piece.format_spec is None
        ):
            parts.append("{prompt}")
        else:
            raise ValueError(f"{name} is an f-string with a field other than {{prompt}}")
    if "{prompt}" not in parts:
        raise ValueError(f"{name} has no {{prompt}} field")
    return "".join(parts)


def download_judge_protocol(name: str, timeout: float = 60.0) -> Path:
    """Fetch a preset's pinned file, check both hashes, cache the template; returns the cache file."""
    from .http import fetch_pinned

    preset = preset_of(name)
    url = f"https://raw.githubusercontent.com/{repository_of(name)}/{preset['commit']}/{preset['path']}"
    content = fetch_pinned(url, preset["file_sha256"], timeout)
    template = extract_template(content.decode("utf-8"), preset["find"])
    if hashlib.sha256(template.encode()).hexdigest() != preset["template_sha256"]:
        raise ValueError(f"the template read from {url} is not the expected one (its sha256 differs)")
    target = cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "repository": repository_of(name), **preset, "template": template}
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(record, ensure_ascii=False, indent=1))
    os.replace(partial, target)
    return target


def repository_of(name: str) -> str:
    """The GitHub repository a preset's template comes from."""
    return preset_of(name).get("repository", REPOSITORY)


def preset_of(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown judge protocol {name!r}; known: flowrl (our own), {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class JudgeProtocol:
    """A preset's template and request settings, from the cache."""

    name: str
    template: str
    max_tokens: int
    do_sample: bool | None

    @classmethod
    def load(cls, name: str) -> JudgeProtocol:
        preset = preset_of(name)
        path = cache_path(name)
        if not path.is_file():
            raise ValueError(
                f"the judge protocol {name!r} is not in {path}: run `flowrl judge-protocol {name}` once (it fetches the "
                f"template from {repository_of(name)} at {preset['commit'][:12]}), or use protocol=flowrl"
            )
        record = json.loads(path.read_text())
        return cls(name, record["template"], preset["max_tokens"], preset["do_sample"])


def parse_pref_grpo(text: str) -> float | None:
    """Pref-GRPO's rule: the first closed <answer> block; 1.0 when it contains "Image 1 is better"
    (tested first), 0.0 for "Image 2 is better", None otherwise (Pref-GRPO scores that as a tie)."""
    if not isinstance(text, str):
        return None
    match = _ANSWER.search(text)
    if match is None:
        return None
    answer = match.group(1).strip()
    if "Image 1 is better" in answer:
        return 1.0
    if "Image 2 is better" in answer:
        return 0.0
    return None
