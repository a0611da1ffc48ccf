"""Periodic evaluation of a training run: deterministic samples of fixed prompts and seeds, a
sample grid and a JSON report per evaluation under out/samples."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowrl.rewards.combine import RewardSet

from .config import TrainConfig
from .images import save_grid
from .prompt_source import PromptSource, read_prompt_file
from .run_files import complete_record


class Evaluator:
    """The policy's native benchmark (ToyShapes for the toy model on ToyShapes prompts), else the
    run's pointwise reward on the evaluation prompts."""

    def __init__(
        self,
        config: TrainConfig,
        policy: Any,
        reward: RewardSet,
        prompts: PromptSource,
        out: Path,
        shift: float,
        weights: Callable[[], contextlib.AbstractContextManager],
        rank: int,
    ) -> None:
        self.config, self.policy, self.reward, self.shift = config, policy, reward, shift
        self.weights, self.rank = weights, rank  # the weights to evaluate (every process enters them together)
        self.samples = out / "samples"
        self.prompts = self.evaluation_prompts(prompts)

    def run(self, iteration: int) -> dict[str, float]:
        """An evaluation with the final weights; every process calls it, rank 0 evaluates ({} elsewhere)."""
        with self.weights():
            return self.evaluate(iteration) if self.rank == 0 else {}

    def redo(self, iteration: int, metrics_path: Path, log: Callable[[dict], None]) -> None:
        """The resumed iteration's evaluation failed in the last run (its record was kept without it):
        evaluate now, with the random state it would have started from, and complete the record."""
        if self.rank == 0:
            print(f"evaluating iteration {iteration} again (its evaluation failed in the last run)", file=sys.stderr)
        stats = self.run(iteration)
        if self.rank == 0:  # the trackers missed the whole record: the failure came before logging it
            log(complete_record(metrics_path, iteration, stats))

    def evaluation_prompts(self, source: PromptSource) -> list[str] | None:
        """The fixed prompts of periodic evaluation; None means the ToyShapes benchmark."""
        if self.config.eval_prompts:
            return read_prompt_file(self.config.eval_prompts)
        if source.toyshapes_split is not None and self.policy.native_benchmark == "toyshapes":
            return None
        return list(dict.fromkeys(source.pool))[:16]

    @torch.no_grad()
    def evaluate(self, iteration: int) -> dict[str, float]:
        """Samples with the current weights, judged; writes samples/iter_NNNNN.{png,json}."""
        start = time.perf_counter()
        self.samples.mkdir(exist_ok=True)
        name = f"iter_{iteration:05d}"
        config = self.config
        if self.prompts is None:
            from flowrl.benchmarks.toyshapes.evaluate import evaluate_toyshapes

            from .generate import sampler

            sample = sampler(self.policy, config.eval_steps, config.guidance, batch_size=128, progress=False)
            report, images = evaluate_toyshapes(
                sample, config.eval_per_category, steps=config.eval_steps, guidance=config.guidance, eta=0.0
            )
            report.save(self.samples / f"{name}.json")
            stats = {
                "eval/overall": report.overall,
                "eval/mean_score": report.mean_score,
                **{f"eval/{k}": v for k, v in report.accuracy.items()},
            }
            nrow = config.eval_per_category
            captions = [("ok " if r["correct"] else "no ") + r["prompt"] for r in report.records]
        else:
            stats, images = self.evaluate_reward(iteration, name)
            nrow = min(8, len(self.prompts))
            captions = list(self.prompts)[: len(images)]
        scale = max(1, 128 // images.shape[-1])
        save_grid(images, self.samples / f"{name}.png", nrow=nrow, scale=scale, captions=captions)
        stats["time/eval"] = time.perf_counter() - start
        return stats

    def evaluate_reward(self, iteration: int, name: str) -> tuple[dict[str, float], torch.Tensor]:
        """The reward's mean on the evaluation prompts, one fixed seed per prompt (the same noise
        at every evaluation); pairwise judges need a group, so only pointwise terms score."""
        from .generate import generate

        prompts = self.prompts
        seeds = list(range(len(prompts)))
        images = generate(
            self.policy,
            prompts,
            seeds,
            steps=self.config.eval_steps,
            guidance=self.config.guidance,
            shift=self.shift,
            batch_size=self.config.max_batch,
        )
        stats: dict[str, float] = {}
        records = [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)]
        pointwise = self.reward.pointwise_only()
        if pointwise is not None:
            scores = pointwise.evaluate(images, prompts)
            for i, record in enumerate(records):
                record.update(reward=float(scores.total[i]), **{k: float(v[i]) for k, v in scores.components.items()})
            stats = {
                "eval/reward": float(scores.total[scores.valid].mean()) if bool(scores.valid.any()) else float("nan")
            }
        (self.samples / f"{name}.json").write_text(
            json.dumps({"iteration": iteration, **stats, "records": records}, indent=2)
        )
        return stats, images
