"""GenEval-style evaluation on ToyShapes: sample held-out prompts with fixed seeds, verify, tabulate."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .breakdown import breakdown_table, diagnose
from .prompts import CATEGORIES, eval_prompts, parse_prompt
from .verify import verify_with_objects


@dataclass
class EvalReport:
    """Accuracy per category, overall accuracy (mean over categories, as GenEval) and records."""

    accuracy: dict[str, float]
    overall: float
    mean_score: float
    num_images: int
    settings: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def table(self) -> str:
        """A fixed-width table: one row per category, then the overall row."""
        lines = [f"{'category':<15}{'accuracy':>10}{'images':>8}"]
        counts = defaultdict(int)
        for r in self.records:
            counts[r["category"]] += 1
        for c in CATEGORIES:
            if c in self.accuracy:
                lines.append(f"{c:<15}{100 * self.accuracy[c]:>9.1f}%{counts[c]:>8}")
        lines.append(f"{'overall':<15}{100 * self.overall:>9.1f}%{self.num_images:>8}")
        lines.append(f"{'mean score':<15}{self.mean_score:>10.3f}")
        return "\n".join(lines)

    def prompt_table(self) -> str:
        """One row per prompt in order of first appearance: accuracy, mean dense score, images."""
        by_prompt: dict[str, list[dict]] = {}
        for r in self.records:
            by_prompt.setdefault(r["prompt"], []).append(r)
        width = max([6] + [len(p) for p in by_prompt]) + 2
        lines = [f"{'prompt':<{width}}{'accuracy':>10}{'score':>8}{'images':>8}"]
        for text, rows in by_prompt.items():
            accuracy = sum(r["correct"] for r in rows) / len(rows)
            score = sum(r["score"] for r in rows) / len(rows)
            lines.append(f"{text:<{width}}{100 * accuracy:>9.1f}%{score:>8.3f}{len(rows):>8}")
        return "\n".join(lines)

    def breakdown_table(self) -> str:
        """Where the images fail, per category: count, shapes, colours, relation (breakdown.py)."""
        return breakdown_table(self.records)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def image_seeds(count: int, seed: int = 0) -> list[int]:
    """The seeds of an evaluation's images: consecutive, from seed * 100000."""
    return [seed * 100_000 + i for i in range(count)]


def eval_set(images_per_category: int = 32, seed: int = 0, split: str = "heldout") -> tuple[list, list[int]]:
    """The fixed (prompt, seed) pairs of the evaluation: held-out (or train) prompts, consecutive seeds."""
    prompts = eval_prompts(images_per_category, split)
    return prompts, image_seeds(len(prompts), seed)


def prompt_set(texts: list[str], images_per_prompt: int = 32, seed: int = 0) -> tuple[list, list[int]]:
    """Chosen ToyShapes prompts, each `images_per_prompt` times in a row, with consecutive seeds
    (the same numbering as `eval_set`); an unknown prompt fails naming the grammar."""
    if not texts:
        raise ValueError("give at least one ToyShapes prompt")
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    prompts = [parse_prompt(text) for text in texts for _ in range(images_per_prompt)]
    return prompts, image_seeds(len(prompts), seed)


def report_from_images(images: torch.Tensor, prompts: list, settings: dict | None = None) -> EvalReport:
    """Verify images [B, 3, H, W] against their prompts and aggregate per category; each record
    also holds the failure stages of `breakdown.diagnose`."""
    verdicts = verify_with_objects(images, prompts)
    by_category: dict[str, list[bool]] = defaultdict(list)
    records = []
    for prompt, (result, objects) in zip(prompts, verdicts):
        by_category[prompt.category].append(result.correct)
        record = {"prompt": prompt.text, "category": prompt.category, "correct": result.correct, "score": result.score}
        records.append(record | diagnose(objects, prompt, result))
    accuracy = {c: sum(v) / len(v) for c, v in by_category.items()}
    overall = sum(accuracy.values()) / len(accuracy)
    mean_score = sum(r["score"] for r in records) / len(records)
    return EvalReport(accuracy, overall, mean_score, len(records), settings or {}, records)


# The sampler an evaluation draws its images with: sample(prompts, seeds) -> float [B, 3, H, W] in
# [0, 1], image i from prompts[i] and seeds[i] alone; the caller binds the model and its settings
# (steps, guidance, eta, batch size), e.g. flowrl.generate.sampler(policy, steps, guidance).
Sampler = Callable[[list[str], list[int]], torch.Tensor]


def evaluate_toyshapes(
    sample: Sampler,
    images_per_category: int = 32,
    *,
    steps: int,
    guidance: float,
    eta: float,
    seed: int = 0,
    split: str = "heldout",
    prompts: list[str] | None = None,
) -> tuple[EvalReport, torch.Tensor]:
    """Draw the fixed evaluation set with `sample` and verify it; returns the report and images.
    `steps`, `guidance` and `eta` are what `sample` was built with, recorded in the report's
    settings. The standard figure is the held-out split with the deterministic sampler (eta 0).
    With `prompts` (ToyShapes prompt texts) those prompts are judged instead,
    `images_per_category` images each, whatever their split."""
    settings = {"steps": steps, "guidance": guidance, "seed": seed, "eta": eta}
    if prompts is None:
        chosen, seeds = eval_set(images_per_category, seed, split)
        settings.update(images_per_category=images_per_category, split=split)
    else:
        chosen, seeds = prompt_set(prompts, images_per_category, seed)
        settings.update(images_per_prompt=images_per_category, prompts=[p.text for p in chosen[::images_per_category]])
    images = sample([p.text for p in chosen], seeds)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[:2] != (len(chosen), 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"the sampler returned {got} for {len(chosen)} prompts; expected images [{len(chosen)}, 3, H, W] in [0, 1]"
        )
    return report_from_images(images, chosen, settings), images
