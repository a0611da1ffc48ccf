"""GenEval's prompts and requirements: the 80 object names, the ten colours, the six prompt
templates, parsing a prompt into what the image must show, GenEval metadata files, and training
prompt lists in the same templates.

GenEval (Ghosh et al. 2023) writes its prompts with six templates (`tag` in brackets):

    a photo of a bench                              [single_object]
    a photo of a toilet and a computer mouse        [two_object]
    a photo of three persons                        [counting]    (two, three or four)
    a photo of a red scissors                       [colors]
    a photo of a dog right of a teddy bear          [position]    (left of, right of, above, below)
    a photo of a purple wine glass and a black apple  [color_attr]

"an" replaces "a" before a vowel ("an orange", "an elephant"). The object names are COCO's 80
categories as GenEval spells them ("computer mouse", "tv remote", "hair drier", ...). Counting
prompts use GenEval's mechanical plural: add "es" after a final "s", else "s" ("buses", "wine
glasses", "skises", but also "persons", "sheeps", "knifes", "benchs"); the parser also accepts
the English plurals ("people", "sheep", "knives", "benches", "skis", ...).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# COCO's 80 categories in GenEval's spelling and order (its object_names.txt).
CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: dict[str, int] = {"two": 2, "three": 3, "four": 4}  # GenEval's counting prompts ask for 2 to 4
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval never asks for a coloured person (colour prompts skip the class).
COLORABLE: tuple[str, ...] = tuple(name for name in CLASSES if name != "person")

# English plurals where appending "s"/"es" as GenEval does is not the English word.
ENGLISH_PLURALS: dict[str, str] = {
    "person": "people",
    "sheep": "sheep",
    "knife": "knives",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
    "bench": "benches",
    "couch": "couches",
    "sandwich": "sandwiches",
    "toothbrush": "toothbrushes",
    "computer mouse": "computer mice",
}

ACCEPTED_FORMS = (
    "accepted forms (GenEval's templates): 'a photo of a X', 'a photo of a X and a Y', "
    "'a photo of two Xs' (two, three, four), 'a photo of a red X', 'a photo of a X left of a Y' "
    "(left of, right of, above, below), 'a photo of a red X and a blue Y'; X, Y among the 80 COCO "
    "names of GenEval (e.g. 'computer mouse', 'tv remote'), colours among " + ", ".join(COLORS)
)


def with_article(word: str) -> str:
    """'an apple', 'a bench': GenEval's rule (an before a, e, i, o, u)."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def geneval_plural(name: str) -> str:
    """The plural GenEval's counting prompts use: +"es" after a final "s", else +"s"."""
    return name + "es" if name.endswith("s") else name + "s"


def english_plural(name: str) -> str:
    """The English plural of a GenEval object name."""
    if name in ENGLISH_PLURALS:
        return ENGLISH_PLURALS[name]
    return geneval_plural(name)


# plural form (GenEval's or English) -> object name; the forms never collide (checked in the tests)
PLURALS: dict[str, str] = {**{english_plural(n): n for n in CLASSES}, **{geneval_plural(n): n for n in CLASSES}}


@dataclass(frozen=True)
class Requirement:
    """One clause of a GenEval judgment: at least `count` objects of `name` (an include), or fewer
    than `count` of them (an exclude). An include may also ask that those objects have `color`,
    and that each be `position[0]` ("left of", ...) of every object matched by the earlier include
    number `position[1]`."""

    name: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class Task:
    """What an image must show for a prompt: GenEval's metadata record (tag, include, exclude)."""

    prompt: str
    tag: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The object names the task mentions, in order, without repeats."""
        return tuple(dict.fromkeys(r.name for r in self.include + self.exclude))

    def to_metadata(self) -> dict:
        """The record in GenEval's evaluation_metadata.jsonl format."""

        def clause(r: Requirement) -> dict:
            out: dict = {"class": r.name, "count": r.count}
            if r.color is not None:
                out["color"] = r.color
            if r.position is not None:
                out["position"] = [r.position[0], r.position[1]]
            return out

        record: dict = {"tag": self.tag, "include": [clause(r) for r in self.include]}
        if self.exclude:
            record["exclude"] = [clause(r) for r in self.exclude]
        record["prompt"] = self.prompt
        return record


def task_from_metadata(record: Mapping, where: str = "metadata") -> Task:
    """A Task from one GenEval metadata record; fails naming `where` and the bad field."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("tag", "include", "prompt"):
        if key not in record:
            raise ValueError(f"{where}: missing {key!r} (GenEval records have tag, include, optional exclude, prompt)")
    include = tuple(
        _clause(c, f"{where} include[{i}]", i) for i, c in enumerate(_clauses(record["include"], f"{where} include"))
    )
    exclude = tuple(
        _clause(c, f"{where} exclude[{i}]", None)
        for i, c in enumerate(_clauses(record.get("exclude", []), f"{where} exclude"))
    )
    if not isinstance(record["prompt"], str) or not isinstance(record["tag"], str):
        raise ValueError(f"{where}: 'prompt' and 'tag' must be strings")
    return Task(record["prompt"], record["tag"], include, exclude)


def _clauses(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of clauses, got {type(value).__name__}")
    return value


def _clause(value: object, where: str, index: int | None) -> Requirement:
    """A Requirement from a clause {"class", "count", optional "color", optional "position"};
    `index` is the clause's place among the includes (None for an exclude: no colour or position)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("class"), str) or not value["class"].strip():
        raise ValueError(f"{where}: expected {{'class': name, 'count': n, ...}}, got {value!r}")
    count = value.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}: count must be a positive int, got {count!r}")
    color = value.get("color")
    if color is not None and (index is None or color not in COLORS):
        raise ValueError(f"{where}: color {color!r} is not supported here; expected one of {COLORS} on an include")
    position = value.get("position")
    if position is not None:
        valid = (
            index is not None
            and isinstance(position, (list, tuple))
            and len(position) == 2
            and position[0] in RELATIONS
            and isinstance(position[1], int)
            and 0 <= position[1] < index
        )
        if not valid:
            raise ValueError(
                f"{where}: position must be [relation, index of an earlier include] with relation in {RELATIONS}, got {position!r}"
            )
        position = (position[0], position[1])
    return Requirement(value["class"], count, color, position)


def load_metadata(path: str | os.PathLike) -> dict[str, Task]:
    """prompt -> Task from a GenEval evaluation_metadata.jsonl file (one JSON record a line;
    blank lines skipped). A missing file or a bad line fails naming the path and line."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"GenEval metadata file not found: {path!r} (expected a JSONL file like GenEval's prompts/evaluation_metadata.jsonl)"
        )
    tasks: dict[str, Task] = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not JSON ({error})") from None
            task = task_from_metadata(record, where)
            tasks[task.prompt] = task  # a repeated prompt: the last record wins
    return tasks


# ---------------------------------------------------------------- parsing prompts


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # longest first


_NAME = f"(?:{_alternation(CLASSES)})"
_COLOR = f"(?:{_alternation(COLORS)})"
_ART = "an? "
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = tuple(
    (tag, re.compile("a photo of " + body + "$"))
    for tag, body in (
        ("single_object", f"{_ART}(?P<a>{_NAME})"),
        ("two_object", f"{_ART}(?P<a>{_NAME}) and {_ART}(?P<b>{_NAME})"),
        ("counting", f"(?P<n>{_alternation(COUNT_WORDS)}) (?P<a>{_alternation(PLURALS)})"),
        ("colors", f"{_ART}(?P<ca>{_COLOR}) (?P<a>{_NAME})"),
        ("position", f"{_ART}(?P<a>{_NAME}) (?P<rel>{_alternation(RELATIONS)}) {_ART}(?P<b>{_NAME})"),
        ("color_attr", f"{_ART}(?P<ca>{_COLOR}) (?P<a>{_NAME}) and {_ART}(?P<cb>{_COLOR}) (?P<b>{_NAME})"),
    )
)


def normalize_prompt(prompt: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final full stop."""
    return " ".join(prompt.lower().split()).rstrip(".").rstrip()


def parse_prompt(prompt: str) -> Task:
    """The GenEval task of a prompt written in one of GenEval's six templates (case, extra spaces
    and a final full stop are ignored; "a" and "an" are both accepted). Anything else fails with
    a ValueError naming the prompt and the accepted forms."""
    text = normalize_prompt(prompt) if isinstance(prompt, str) else None
    for tag, pattern in _PATTERNS if text is not None else ():
        match = pattern.match(text)
        if match is None:
            continue
        g = match.groupdict()
        if tag == "single_object":
            include = (Requirement(g["a"]),)
        elif tag == "two_object":
            include = (Requirement(g["a"]), Requirement(g["b"]))
        elif tag == "counting":
            name, count = PLURALS[g["a"]], COUNT_WORDS[g["n"]]
            return Task(prompt, tag, (Requirement(name, count),), (Requirement(name, count + 1),))
        elif tag == "colors":
            include = (Requirement(g["a"], color=g["ca"]),)
        elif tag == "position":  # GenEval: the reference object first, then the one placed relative to it
            include = (Requirement(g["b"]), Requirement(g["a"], position=(g["rel"], 0)))
        else:
            include = (Requirement(g["a"], color=g["ca"]), Requirement(g["b"], color=g["cb"]))
        return Task(prompt, tag, include)
    raise ValueError(
        f"GenEval prompt {prompt!r} is not in GenEval's templates and has no metadata record; {ACCEPTED_FORMS}; "
        "other prompts need metadata= a GenEval evaluation_metadata.jsonl file that lists them"
    )


def render_prompt(task: Task, plural: str = "geneval") -> str:
    """The GenEval-template prompt of a task of one of the six tags (the inverse of parse_prompt);
    plural="geneval" writes counting prompts as GenEval does ("persons"), "english" as English
    does ("people")."""
    inc = task.include
    if task.tag == "single_object":
        return f"a photo of {with_article(inc[0].name)}"
    if task.tag == "two_object":
        return f"a photo of {with_article(inc[0].name)} and {with_article(inc[1].name)}"
    if task.tag == "counting":
        words = {v: k for k, v in COUNT_WORDS.items()}
        if inc[0].count not in words:
            raise ValueError(
                f"cannot render a counting prompt for {inc[0].count} objects; GenEval's templates count {sorted(words)}"
            )
        number = words[inc[0].count]
        noun = geneval_plural(inc[0].name) if plural == "geneval" else english_plural(inc[0].name)
        return f"a photo of {number} {noun}"
    if task.tag == "colors":
        return f"a photo of {with_article(inc[0].color)} {inc[0].name}"
    if task.tag == "position":
        return f"a photo of {with_article(inc[1].name)} {inc[1].position[0]} {with_article(inc[0].name)}"
    if task.tag == "color_attr":
        return f"a photo of {with_article(inc[0].color)} {inc[0].name} and {with_article(inc[1].color)} {inc[1].name}"
    raise ValueError(f"cannot render a prompt for tag {task.tag!r}; expected one of {TAGS}")


# ---------------------------------------------------------------- training prompts


def _space_size(tag: str) -> int:
    n, m, c = len(CLASSES), len(COLORABLE), len(COLORS)
    return {
        "single_object": n,
        "two_object": n * (n - 1),
        "counting": n * len(COUNT_WORDS),
        "colors": m * c,
        "position": n * (n - 1) * len(RELATIONS),
        "color_attr": m * (m - 1) * c * (c - 1),
    }[tag]


def _pair(index: int, items: Sequence[str]) -> tuple[str, str]:
    """The index-th ordered pair of distinct items."""
    first, rest = divmod(index, len(items) - 1)
    return items[first], items[rest + (rest >= first)]


def _prompt_at(tag: str, index: int) -> str:
    """The index-th prompt of a tag's space (every distinct prompt of that template once)."""
    if tag == "single_object":
        return f"a photo of {with_article(CLASSES[index])}"
    if tag == "two_object":
        a, b = _pair(index, CLASSES)
        return f"a photo of {with_article(a)} and {with_article(b)}"
    if tag == "counting":
        name, k = divmod(index, len(COUNT_WORDS))
        return f"a photo of {list(COUNT_WORDS)[k]} {geneval_plural(CLASSES[name])}"
    if tag == "colors":
        name, color = divmod(index, len(COLORS))
        return f"a photo of {with_article(COLORS[color])} {COLORABLE[name]}"
    if tag == "position":
        pair, rel = divmod(index, len(RELATIONS))
        a, b = _pair(pair, CLASSES)
        return f"a photo of {with_article(a)} {RELATIONS[rel]} {with_article(b)}"
    pair, colors = divmod(index, len(COLORS) * (len(COLORS) - 1))
    a, b = _pair(pair, COLORABLE)
    ca, cb = _pair(colors, COLORS)
    return f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"


def training_prompts(n: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    """n prompts in GenEval's six templates, balanced over the tags (n // 6 each, the first n % 6
    tags one more), shuffled; deterministic in `seed`; none in `exclude`.

    Each tag's prompts are drawn without repeats from every prompt its template can make with the
    80 object names and ten colours, under GenEval's rules (distinct objects in a pair, counts 2 to
    4 with GenEval's plurals, no coloured person). A tag runs out only when n asks for more than
    its distinct prompts (single_object has 80): its prompts then repeat, each as often as the
    others give or take one."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"training_prompts: n must be a non-negative int, got {n!r}")
    rng = np.random.default_rng(seed)
    banned = set(exclude)
    prompts: list[str] = []
    for position, tag in enumerate(TAGS):
        want = n // len(TAGS) + (position < n % len(TAGS))
        pool: list[str] = []
        for index in rng.permutation(_space_size(tag)):
            if len(pool) == want:
                break
            prompt = _prompt_at(tag, int(index))
            if prompt not in banned:
                pool.append(prompt)
        if want and not pool:
            raise ValueError(f"training_prompts: every {tag} prompt is excluded")
        prompts.extend(pool[i % len(pool)] for i in range(want))  # repeats only when the tag ran out
    return [prompts[i] for i in rng.permutation(len(prompts))]
