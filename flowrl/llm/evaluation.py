"""Evaluation of a text policy: greedy completions of held-out prompts, the run's reward on them
(eval/accuracy for exact-match rewards), written to samples/iter_NNNNN.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flowrl.evaluation import Evaluator

from .experience import TextExperience


class TextEvaluator(Evaluator):
    """Evaluator's run/redo protocol over a text experience source."""

    def __init__(self, config, experience: TextExperience, out: Path, weights, rank: int) -> None:
        self.config, self.experience, self.weights, self.rank = config, experience, weights, rank
        self.samples = out / "samples"
        self.rows = experience.prompts.evaluation(config.eval_prompts, experience.options.eval_size)
        self.judge = experience.rewards.unshuffled()  # a shuffled-reward control is still judged truly

    @torch.no_grad()
    def evaluate(self, iteration: int) -> dict[str, float]:
        start = time.perf_counter()
        completions = self.experience.sample(self.rows, 1, seed=0, greedy=True)
        values, means = self.judge(self.rows, completions.texts, completions.completion_ids())
        scored = [v for v in values if v == v]
        stats = {"eval/reward": sum(scored) / len(scored) if scored else float("nan")}
        if "exact_match" in self.judge.functions:
            stats["eval/accuracy"] = means["reward/exact_match/mean"]
        self.samples.mkdir(exist_ok=True)
        records = [
            {"prompt": row["prompt"], "completion": text, "reward": value}
            for row, text, value in zip(self.rows, completions.texts, values)
        ]
        (self.samples / f"iter_{iteration:05d}.json").write_text(
            json.dumps({"iteration": iteration, **stats, "records": records}, indent=2)
        )
        stats["time/eval"] = time.perf_counter() - start
        return stats
