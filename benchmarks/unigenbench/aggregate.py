"""UniGenBench scores from verdicts: accuracy per sub-dimension, primary dimension, theme and
subtheme, and the leaderboard's Overall.

Every (image, test point) verdict counts once (a micro-average inside each group), as the
official `calculate_scores` does; Overall is the unweighted mean of the primary-dimension
accuracies, as the leaderboard reports it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .types import BenchPrompt, TestPoint, Verdict

FORMAT = "flowrl.unigenbench.results/1"
SUBTHEME_SEPARATOR = " / "


@dataclass(frozen=True)
class Tally:
    """Correct and total verdicts of one group; accuracy = correct / total."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """correct / total (0 for an empty group)."""
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, float]:
        """{"correct", "total", "accuracy"}, the shape the official score JSON uses."""
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Tally:
        """Read {"correct", "total", ...}; `where` names the entry in errors."""
        try:
            correct, total = int(data["correct"]), int(data["total"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: expected integer 'correct' and 'total', got {data!r}") from error
        if not 0 <= correct <= total:
            raise ValueError(f"{where}: expected 0 <= correct <= total, got {correct}/{total}")
        return cls(correct, total)


@dataclass
class Results:
    """Aggregated UniGenBench scores; each group maps a name to its Tally."""

    sub_dimensions: dict[str, Tally]
    primary_dimensions: dict[str, Tally]
    themes: dict[str, Tally]
    subthemes: dict[str, Tally]  # keyed "theme / subtheme": subtheme names such as "Other" recur under several themes
    overall: float
    num_images: int  # distinct images with at least one verdict
    num_verdicts: int
    num_prompts: int  # prompts with at least one verdict
    num_prompts_listed: int  # prompts passed to aggregate()
    incomplete_images: list[str] = field(default_factory=list)  # judged on only some of their test points
    missing_images: list[str] = field(
        default_factory=list
    )  # expected but without any verdict (needs images_per_prompt)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def micro_accuracy(self) -> float:
        """correct / total over all verdicts (not the leaderboard's Overall; kept for reference)."""
        correct = sum(t.correct for t in self.primary_dimensions.values())
        total = sum(t.total for t in self.primary_dimensions.values())
        return correct / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; its "primary_dimensions" and "sub_dimensions" match the official JSON."""
        groups = {name: {k: t.to_dict() for k, t in getattr(self, name).items()} for name in _GROUPS}
        return {
            "format": FORMAT,
            "overall": self.overall if self.num_verdicts else None,  # null when nothing was judged
            "micro_accuracy": self.micro_accuracy,
            **groups,
            "counts": {
                "images": self.num_images,
                "verdicts": self.num_verdicts,
                "prompts": self.num_prompts,
                "prompts_listed": self.num_prompts_listed,
                "incomplete_images": len(self.incomplete_images),
                "missing_images": len(self.missing_images),
            },
            "incomplete_images": list(self.incomplete_images),
            "missing_images": list(self.missing_images),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """Inverse of to_dict; also reads the official score JSON (only the two dimension groups)."""
        missing = [k for k in ("primary_dimensions", "sub_dimensions") if k not in data]
        if missing:
            raise ValueError(f"not a UniGenBench results dict: missing {missing}; has keys {sorted(data)}")
        groups = {name: _read_group(data.get(name, {}), name) for name in _GROUPS}
        counts = data.get("counts", {})
        total = sum(t.total for t in groups["primary_dimensions"].values())
        return cls(
            **groups,
            overall=float(data["overall"])
            if data.get("overall") is not None
            else _mean_accuracy(groups["primary_dimensions"]),
            num_images=int(counts.get("images", 0)),
            num_verdicts=int(counts.get("verdicts", total)),
            num_prompts=int(counts.get("prompts", 0)),
            num_prompts_listed=int(counts.get("prompts_listed", 0)),
            incomplete_images=list(data.get("incomplete_images", [])),
            missing_images=list(data.get("missing_images", [])),
            meta=dict(data.get("meta", {})),
        )


_GROUPS = ("primary_dimensions", "sub_dimensions", "themes", "subthemes")


def _read_group(group: dict[str, Any], name: str) -> dict[str, Tally]:
    # The official JSON keys primary dimensions as `cp.split("-", 1)[0]`, trailing space included.
    return {key.strip(): Tally.from_dict(value, f"{name}[{key!r}]") for key, value in group.items()}


def _mean_accuracy(tallies: dict[str, Tally]) -> float:
    return sum(t.accuracy for t in tallies.values()) / len(tallies) if tallies else 0.0


def subtheme_key(prompt: BenchPrompt) -> str:
    """The subtheme's row name, "theme / subtheme"."""
    return f"{prompt.theme}{SUBTHEME_SEPARATOR}{prompt.subtheme}"


def _check_verdicts(prompts: dict[int, BenchPrompt], verdicts: Iterable[Verdict]) -> None:
    """Raise naming every verdict whose prompt is unknown, whose test point its prompt does not
    list, or that repeats an (image, test point) more often than the prompt lists it."""
    unknown_prompt, unknown_point = [], []
    seen: Counter[tuple[str, str]] = Counter()
    repeated = []
    for v in verdicts:
        prompt = prompts.get(v.prompt_index)
        if prompt is None:
            unknown_prompt.append(f"{v.image} (prompt {v.prompt_index})")
            continue
        names = [tp.name for tp in prompt.testpoints]
        if v.testpoint not in names:
            unknown_point.append(f"{v.image}: {v.testpoint!r} (prompt {v.prompt_index} lists {names})")
            continue
        seen[(v.image, v.testpoint)] += 1
        if seen[(v.image, v.testpoint)] > names.count(v.testpoint):
            repeated.append(f"{v.image}: {v.testpoint!r}")
    problems = []
    if unknown_prompt:
        problems.append(f"verdicts for unknown prompts (known indices {_span(prompts)}): {_few(unknown_prompt)}")
    if unknown_point:
        problems.append(f"verdicts on test points their prompt does not list: {_few(unknown_point)}")
    if repeated:
        problems.append(f"repeated verdicts for the same (image, test point): {_few(repeated)}")
    if problems:
        raise ValueError("; ".join(problems))


def _span(prompts: dict[int, BenchPrompt]) -> str:
    return f"{min(prompts)}..{max(prompts)}" if prompts else "none"


def _few(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _image_prompt_index(image: str) -> int | None:
    """The prompt index encoded in an image name `{index}_{k}.png`, or None if it has another form."""
    head, _, tail = Path(image).stem.partition("_")
    return int(head) if head.isdigit() and tail.isdigit() else None


def _check_image_names(verdicts: Iterable[Verdict]) -> None:
    wrong = [
        f"{v.image} (prompt_index {v.prompt_index})"
        for v in verdicts
        if _image_prompt_index(v.image) not in (None, v.prompt_index)
    ]
    if wrong:
        raise ValueError(f"image names `{{index}}_{{k}}.png` disagree with the verdicts' prompt_index: {_few(wrong)}")


def _tally(keys_and_outcomes: Iterable[tuple[str, bool]]) -> dict[str, Tally]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, correct in keys_and_outcomes:
        counts[key][0] += int(correct)
        counts[key][1] += 1
    return {key: Tally(c, t) for key, (c, t) in sorted(counts.items())}


def _coverage(
    prompts: dict[int, BenchPrompt], verdicts: list[Verdict], images_per_prompt: int | None, suffix: str = ".png"
) -> tuple[list[str], list[str]]:
    """(images judged on only some of their prompt's test points, expected images with no verdict)."""
    judged: dict[str, Counter[str]] = defaultdict(Counter)
    image_prompt: dict[str, int] = {}
    for v in verdicts:
        judged[v.image][v.testpoint] += 1
        image_prompt[v.image] = v.prompt_index
    incomplete = sorted(
        (
            image
            for image, points in judged.items()
            if points != Counter(tp.name for tp in prompts[image_prompt[image]].testpoints)
        ),
        key=_image_sort_key,
    )
    missing: list[str] = []
    if images_per_prompt is not None:
        names = {Path(image).name for image in judged}
        expected = (f"{index}_{k}{suffix}" for index in sorted(prompts) for k in range(images_per_prompt))
        missing = [name for name in expected if name not in names]
    return incomplete, missing


def _image_sort_key(image: str) -> tuple:
    head, _, tail = Path(image).stem.partition("_")
    return (int(head) if head.isdigit() else -1, int(tail) if tail.isdigit() else -1, image)


def aggregate(
    prompts: list[BenchPrompt],
    verdicts: list[Verdict],
    *,
    images_per_prompt: int | None = None,
    meta: dict[str, Any] | None = None,
    suffix: str = ".png",
) -> Results:
    """Tally verdicts per sub-dimension, primary dimension, theme and subtheme; Overall is the
    unweighted mean of primary-dimension accuracies. With `images_per_prompt`, images
    `{index}_{k}{suffix}` (k < images_per_prompt) of listed prompts that have no verdict are reported missing."""
    by_index: dict[int, BenchPrompt] = {}
    for p in prompts:
        if p.index in by_index:
            raise ValueError(f"prompt index {p.index} is listed twice: {by_index[p.index].text!r} and {p.text!r}")
        by_index[p.index] = p
    if images_per_prompt is not None and images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1 or None, got {images_per_prompt}")
    _check_verdicts(by_index, verdicts)
    _check_image_names(verdicts)

    points = [TestPoint(v.testpoint, "") for v in verdicts]
    owners = [by_index[v.prompt_index] for v in verdicts]
    primary = _tally((tp.primary, v.correct) for tp, v in zip(points, verdicts))
    incomplete, missing = _coverage(by_index, verdicts, images_per_prompt, suffix)
    return Results(
        sub_dimensions=_tally((tp.sub, v.correct) for tp, v in zip(points, verdicts)),
        primary_dimensions=primary,
        themes=_tally((p.theme, v.correct) for p, v in zip(owners, verdicts)),
        subthemes=_tally((subtheme_key(p), v.correct) for p, v in zip(owners, verdicts)),
        overall=_mean_accuracy(primary),
        num_images=len({v.image for v in verdicts}),
        num_verdicts=len(verdicts),
        num_prompts=len({v.prompt_index for v in verdicts}),
        num_prompts_listed=len(by_index),
        incomplete_images=incomplete,
        missing_images=missing,
        meta=dict(meta or {}),
    )
