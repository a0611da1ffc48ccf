"""The docs check: every command shown in README.md and docs/*.md parses, and every relative link
resolves.

Commands are read from fenced code blocks (```bash, ```sh, ```shell, ```console and plain ```)
and from inline code spans that start with `flowrl`, `python`, `accelerate launch` or `make`:

- `flowrl SUB ...` (also `python -m flowrl`, `accelerate launch ... -m flowrl` and
  `python scripts/train.py`): SUB's `--help` exits 0, and the shown arguments parse with the
  real parser (nothing runs);
- `flowrl train RECIPE key=value ...`: the recipe resolves (flowrl.cli.resolve_recipe) and the
  overrides pass the real config path, flowrl.config.load_config, which validates and loads no
  model;
- `python -m MODULE`: the module exists; `python PATH.py`: the file exists; `make TARGET`: the
  Makefile has the target.

Python blocks must parse, and what they import from `flowrl` must exist. Relative links (and
their #anchors, GitHub-style) must point at existing files and headings.

Placeholders are allowed where a reader fills in a value: an all-capitals word (`RECIPE`, `seed=S`,
`RUN/final`) or `...`. A user's own recipe file that does not exist (`my_recipe.yaml`) stands for
the toy recipe. Paths that earlier commands would create (`policy=runs/...`, `prompts=FILE.txt`)
are replaced by stand-ins of the same kind, so the key is still checked. The plug-in example of
docs/rewards.md (the block starting `# mypkg/rewards.py`) is written to a temporary package, so
`reward=mypkg.rewards:...` is checked against the documented code.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES = ["training", "methods", "llm", "rewards", "unigenbench", "toyshapes", "distributed", "results"]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
COMMAND_STARTS = ("flowrl ", "python ", "python3 ", "accelerate launch ", "make ")
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")


# ---------------------------------------------------------------- reading the Markdown


def split_markdown(text: str) -> tuple[list[tuple[str, str]], str]:
    """The fenced code blocks as (language, body) and the text outside them (blocks blanked)."""
    blocks, prose, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, language = match.groups()
        body, i = [], i + 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append((language.lower(), "\n".join(body)))
        prose.append("")
        i += 1
    return blocks, "\n".join(prose)


def inline_spans(prose: str) -> list[str]:
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose)


def command_lines(text: str) -> list[str]:
    """Every shell line of the code blocks (continuations joined) and every inline command."""
    blocks, prose = split_markdown(text)
    lines = []
    for language, body in blocks:
        if language not in SHELL_LANGUAGES:
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if line:
                lines.append(line)
    lines += [span.strip() for span in inline_spans(prose) if span.strip().startswith(COMMAND_STARTS)]
    return lines


def split_commands(line: str) -> list[list[str]]:
    """The commands of one shell line as token lists (comments dropped, split at && ; |)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


# ---------------------------------------------------------------- checking the commands


def is_placeholder(value: str) -> bool:
    return value == "..." or any(PLACEHOLDER.fullmatch(part) for part in value.strip("[]").split("/") if part)


class Checker:
    """Checks commands and links; `problems` collects what is wrong, one line each."""

    def __init__(self, scratch: Path) -> None:
        self.problems: list[str] = []
        self.counts = {"flowrl": 0, "train": 0, "module": 0, "link": 0}
        self.scratch = scratch
        self.prompts_file = scratch / "prompts.txt"
        self.prompts_file.write_text("a circle\n")
        self._helps: dict[tuple[str, ...], str | None] = {}

    def fail(self, where: str, what: str) -> None:
        what = what if len(what) <= 400 else what[:400] + " ..."
        self.problems.append(f"{where}: {what}")

    # --- dispatch
    def check_command(self, where: str, tokens: list[str]) -> None:
        while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # FOO=bar cmd
            tokens = tokens[1:]
        if not tokens:
            return
        head = tokens[0]
        if head == "flowrl":
            self.check_flowrl(where, tokens[1:])
        elif head in ("python", "python3") or head.endswith("/python"):
            self.check_python(where, tokens[1:])
        elif tokens[:2] == ["accelerate", "launch"]:
            self.check_accelerate(where, tokens[2:])
        elif head == "make":
            self.check_make(where, tokens[1:])

    def check_python(self, where: str, args: list[str]) -> None:
        if not args:
            return
        if args[0] == "-m" and len(args) > 1:
            self.check_module(where, args[1], args[2:])
        elif args[0].endswith(".py"):
            self.check_script(where, args[0], args[1:])
        elif args[0] not in ("-", "-c"):  # a script from stdin or a string is not checked
            self.fail(where, f"python {' '.join(args)}: neither -m MODULE nor a script")

    def check_accelerate(self, where: str, args: list[str]) -> None:
        if "-m" in args:
            i = args.index("-m")
            if i + 1 >= len(args):
                self.fail(where, "accelerate launch -m without a module")
                return
            self.check_module(where, args[i + 1], args[i + 2 :])
            return
        scripts = [i for i, a in enumerate(args) if a.endswith(".py")]
        if scripts:
            self.check_script(where, args[scripts[0]], args[scripts[0] + 1 :])
        elif not all(is_placeholder(a) or a.startswith("-") for a in args):
            self.fail(where, f"accelerate launch {' '.join(args)}: no -m MODULE or script.py")

    def check_module(self, where: str, module: str, rest: list[str]) -> None:
        self.counts["module"] += 1
        if module == "flowrl":
            self.check_flowrl(where, rest)
            return
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            self.fail(where, f"python -m {module}: no such module")

    def check_script(self, where: str, path: str, rest: list[str]) -> None:
        if not (ROOT / path).is_file():
            self.fail(where, f"python {path}: no such file")
        elif path == "scripts/train.py":
            self.check_flowrl(where, ["train", *rest])
        elif path == "scripts/pretrain_toy.py":
            self.check_flowrl(where, ["pretrain-toy", *rest])

    def check_make(self, where: str, targets: list[str]) -> None:
        known = set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))
        for target in targets:
            if not target.startswith("-") and "=" not in target and target not in known:
                self.fail(where, f"make {target}: the Makefile has no such target (it has {sorted(known)})")

    # --- flowrl SUB ...
    def help_exits_zero(self, words: tuple[str, ...]) -> str | None:
        """None when `flowrl WORDS --help` exits 0, else why not."""
        if words not in self._helps:
            from flowrl.cli import main

            out, err = io.StringIO(), io.StringIO()
            why = "--help did not exit"
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main([*words, "--help"])
                except SystemExit as stop:
                    if stop.code not in (0, None):
                        why = f"--help exited {stop.code}: {err.getvalue().strip()[-300:]}"
                    else:
                        why = None
            self._helps[words] = why
        return self._helps[words]

    def check_flowrl(self, where: str, args: list[str]) -> None:
        self.counts["flowrl"] += 1
        if not args or args[0].startswith("-"):
            if args and args[0] in ("-h", "--help"):
                return
            self.fail(where, f"flowrl {' '.join(args)}: no subcommand")
            return
        nested = args[0] == "eval" and len(args) > 1 and not args[1].startswith("-")  # eval BENCHMARK
        words = tuple(args[:2]) if nested else tuple(args[:1])
        why = self.help_exits_zero(words)
        if why is not None:
            self.fail(where, f"flowrl {' '.join(words)}: {why}")
            return
        if "--help" in args or "-h" in args or len(args) == len(words):
            return  # `flowrl SUB` alone names the command (in prose and tables): its --help is the check
        if args[0] in ("pretrain-toy", "pretrain-llm-toy", "serve-reward"):
            self.check_passed_on(where, args[0], args[1:])
            return
        from flowrl.cli import build_parser

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parsed, rest = build_parser().parse_known_args(args)
            except SystemExit:
                self.fail(where, f"flowrl {' '.join(args)}: does not parse: {err.getvalue().strip()[-300:]}")
                return
        if rest:
            self.fail(where, f"flowrl {' '.join(args)}: unrecognised arguments {rest}")
            return
        if args[0] == "train":
            self.check_train(where, parsed)
        elif args[0] in ("sample", "eval") and getattr(parsed, "prompt", None):
            self.check_prompts(where, args[0], parsed.prompt)

    def check_passed_on(self, where: str, sub: str, rest: list[str]) -> None:
        """pretrain-toy and serve-reward hand their arguments to their own parsers."""
        if sub == "pretrain-toy":
            from flowrl.toy_pretraining import build_parser
        elif sub == "pretrain-llm-toy":
            from flowrl.llm.pretraining import build_parser
        else:
            from flowrl.rewards import serve

            build_parser = getattr(serve, "build_parser", None) or serve._parser
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(rest)
            except SystemExit:
                self.fail(where, f"flowrl {sub} {' '.join(rest)}: does not parse: {err.getvalue().strip()[-300:]}")

    def check_prompts(self, where: str, sub: str, prompts: str | list[str]) -> None:
        from flowrl.benchmarks.toyshapes.prompts import parse_prompt

        for text in [prompts] if isinstance(prompts, str) else prompts:
            if is_placeholder(text):
                continue
            try:
                parse_prompt(text)
            except ValueError as error:
                self.fail(where, f"flowrl {sub} --prompt {text!r}: {error}")

    def check_train(self, where: str, parsed) -> None:
        from flowrl.cli import resolve_recipe
        from flowrl.config import FIELDS, load_config

        self.counts["train"] += 1
        if parsed.help_config:
            return
        recipe, overrides = parsed.recipe, list(parsed.overrides)
        if recipe is not None and "=" in recipe:  # `flowrl train key=value`, as the command reads it
            recipe, overrides = None, [recipe, *overrides]
        own_file = recipe is not None and recipe.endswith((".yaml", ".yml")) and not (ROOT / recipe).is_file()
        if recipe is None or is_placeholder(recipe) or own_file:
            recipe = "toy"  # the default, a placeholder, or the reader's own recipe file
        try:
            path = resolve_recipe(recipe)
        except ValueError as error:
            self.fail(where, f"flowrl train {recipe}: {error}")
            return
        kept = []
        for text in overrides:
            key, _, value = text.partition("=")
            if not _ or is_placeholder(key.split(".")[-1]) or key == "key":
                if not _:
                    self.fail(where, f"flowrl train: {text!r} is neither a recipe (that comes first) nor key=value")
                continue
            if is_placeholder(value):
                if "." not in key and key not in FIELDS:
                    self.fail(where, f"flowrl train: unknown config key {key!r}")
                continue
            kept.append(f"{key}={self.stand_in(key, value)}")
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                load_config(path, kept)
        except (ValueError, TypeError) as error:
            self.fail(where, f"flowrl train {recipe} {' '.join(overrides)}: {error}")

    def stand_in(self, key: str, value: str) -> str:
        """A value of the same kind for paths that earlier commands would create."""
        if key in ("prompts", "eval_prompts") and not value.startswith("toyshapes:") and not (ROOT / value).is_file():
            return str(self.prompts_file)
        if key == "policy" and value != "toy" and not (ROOT / value).exists():
            hub_id = value.count("/") == 1 and not value.startswith((".", "/", "~", "runs/"))
            return value if hub_id else "toy"
        return value

    # --- links
    def check_links(self, doc: Path, prose: str) -> None:
        prose = re.sub(r"`[^`\n]*`", "", prose)
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            self.counts["link"] += 1
            where = f"{doc.name}: link {target}"
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                self.fail(where, "no such file")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
                self.fail(where, f"{file.name} has no heading with the anchor #{anchor}")

    # --- Python blocks
    def check_python_block(self, where: str, body: str) -> None:
        try:
            tree = ast.parse(textwrap.dedent(body))
        except SyntaxError as error:
            self.fail(where, f"a python block does not parse: {error}")
            return
        for node in ast.walk(tree):
            ours = isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "flowrl"
            if ours:
                try:
                    module = importlib.import_module(node.module)
                except ImportError as error:
                    self.fail(where, f"from {node.module} import ...: {error}")
                    continue
                for alias in node.names:
                    package = hasattr(module, "__path__")
                    submodule = importlib.util.find_spec(f"{node.module}.{alias.name}") if package else None
                    if not hasattr(module, alias.name) and submodule is None:
                        self.fail(where, f"from {node.module} import {alias.name}: no such name")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "flowrl":
                        self.check_module(where, alias.name, [])

    def check_doc(self, doc: Path) -> None:
        text = doc.read_text()
        for language, body in split_markdown(text)[0]:
            if language in ("python", "py"):
                self.check_python_block(f"{doc.name}: python block {body.strip().splitlines()[0][:60]!r}", body)
        for line in command_lines(text):
            where = f"{doc.name}: {line[:120]}"
            try:
                commands = split_commands(line)
            except ValueError as error:
                if line.startswith(COMMAND_STARTS):
                    self.fail(where, f"not a shell line ({error})")
                continue
            for tokens in commands:
                self.check_command(where, tokens)
        self.check_links(doc, split_markdown(text)[1])


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors, seen = set(), {}
    for line in split_markdown(text)[1].splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


# ---------------------------------------------------------------- the tests


@pytest.fixture
def checker(tmp_path, monkeypatch):
    """A Checker run from the repository root, with the documented plug-in reward importable."""
    monkeypatch.chdir(ROOT)
    rewards_page = ROOT / "docs" / "rewards.md"
    blocks = split_markdown(rewards_page.read_text())[0] if rewards_page.is_file() else []
    for language, body in blocks:
        if language == "python" and body.startswith("# mypkg/rewards.py"):
            package = tmp_path / "plugins" / "mypkg"
            package.mkdir(parents=True)
            (package / "__init__.py").write_text("")
            (package / "rewards.py").write_text(textwrap.dedent(body))
            monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield Checker(tmp_path)
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_the_docs_pages_exist():
    missing = [page for page in PAGES if not (ROOT / "docs" / f"{page}.md").is_file()]
    assert not missing, f"docs pages missing: {missing}"


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 260, f"README.md has {lines} lines; keep it at about 250 and move reference material to docs/"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_command_and_link_of(doc, checker):
    checker.check_doc(doc)
    assert not checker.problems, "\n".join(checker.problems)


def test_the_check_reads_the_docs(checker):
    """The check finds what it is meant to check (an empty extraction would pass vacuously)."""
    for doc in DOCS:
        checker.check_doc(doc)
    counts = checker.counts
    assert counts["flowrl"] >= 60 and counts["train"] >= 30 and counts["module"] >= 5 and counts["link"] >= 20, counts


def test_the_check_fails_on_bad_commands_and_links(checker, tmp_path):
    recipe = tmp_path / "minimal.yaml"  # the defaults: this test does not depend on the shipped recipes
    recipe.write_text("policy: toy\n")
    bad = {
        "`flowrl trian`": "flowrl trian",
        f"`flowrl train {recipe} lrr=1`": "lrr",
        "`flowrl train no_such_recipe`": "no_such_recipe",
        f"`flowrl train {recipe} method.windw=3`": "windw",
        f"`flowrl train {recipe} objective.no_such_option=1`": "no_such_option",
        "`flowrl eval toyshapes --no-such-flag`": "--no-such-flag",
        '`flowrl eval toyshapes --prompt "a pink star"`': "pink",
        "`flowrl pretrain-toy --stepz 3`": "--stepz",
        "`python -m flowrl.no_such_module`": "flowrl.no_such_module",
        "`python scripts/no_such_script.py`": "no_such_script",
        f"`accelerate launch --num_processes 2 -m flowrl train {recipe} lr=fast`": "lr=fast",
        "`make no_such_target`": "no_such_target",
        "```python\nfrom flowrl.rewards import no_such_name\n```": "no_such_name",
        "```python\nimport flowrl.no_such_package\n```": "no_such_package",
        "[a page](no_such_page.md)": "no_such_page",
        "[a heading](#no-such-heading)": "no-such-heading",
    }
    doc = tmp_path / "bad.md"
    for example, needle in bad.items():
        doc.write_text(f"# Bad\n\n{example}\n")
        checker.problems.clear()
        checker.check_doc(doc)
        assert checker.problems and needle in "\n".join(checker.problems), (example, checker.problems)
    doc.write_text(
        f"# Good\n\n```bash\nflowrl train {recipe} lr=1e-4 method.noise_level=0.5 seed=S  # a comment\n"
        "flowrl eval toyshapes --images-per-category 96 --checkpoint RUN/final --json run.json\n```\n\n"
        "[here](#good)\n"
    )
    checker.problems.clear()
    checker.check_doc(doc)
    assert not checker.problems, checker.problems
