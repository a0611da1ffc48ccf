"""Checkpoints of a training run and exact resume: weights, EMA, optimizer, random state, the
objective's own state and where the run stands; and what a failure saves."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backend import TrainingBackend
from .config import TrainConfig
from .run_files import (
    append_metrics,
    archived_checkpoints,
    forget_earlier_run,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_metrics,
    verify_checkpoint,
)
from .sharding import full_tensors, load_full

# Keys that must agree between a checkpoint's run and this one for a resume to continue it.
SAME_RUN_KEYS = (
    "policy",
    "method",
    "method_options",
    "lora_rank",
    "lora_targets",
    "seed",
    "prompts",
    "reward",
    "reward_options",
    "prompts_per_iteration",
)


@dataclass
class Progress:
    """Where the run stands."""

    iteration: int = 0
    saved_iteration: int = 0  # the iteration of the last checkpoint written (or resumed from)
    evaluation_due: bool = False  # resumed after the evaluation of that iteration failed
    weights_touched: bool = False  # this iteration's update has started an optimizer step
    optimizer_steps: int = 0  # over the whole run (EMA warm-up and interval, the NFT sampler's decay)


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer steps taken so far, as AdamW counts them in its state (0 before the first):
    the step count of a checkpoint written before the trainer saved its own."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)


class StateParts:
    """Several parts' checkpoint state as one (the objective's, and a text run's prompt values):
    their state dicts merge (keys must differ) and each reads its own back from the whole."""

    def __init__(self, *parts: Any) -> None:
        self.parts = [part for part in parts if part is not None]

    def state_dict(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in self.parts:
            state = part.state_dict()
            clash = set(state) & set(merged)
            if clash:
                raise ValueError(f"checkpoint state keys {sorted(clash)} are written by two parts")
            merged.update(state)
        return merged

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        for part in self.parts:
            part.load_state_dict(state, where)


class Checkpointer:
    """Writes out/checkpoint on rank 0 and resumes from it; every process calls save (sharded
    tensors are gathered first), and a sharded run writes the same full tensors as an unsharded
    one, so either resumes the other."""

    def __init__(
        self,
        out: Path,
        config: TrainConfig,
        rank: int,
        world: int,
        backend: TrainingBackend,
        ema: Any,
        objective: Any,
        progress: Progress,
    ) -> None:
        self.out, self.config, self.rank, self.world = out, config, rank, world
        self.backend, self.ema, self.objective, self.progress = backend, ema, objective, progress
        self.directory = out / "checkpoint"
        self.metrics_path = out / "metrics.jsonl"

    def save(self, rng: dict | None = None, evaluation_due: bool = False) -> None:
        """`rng`: the random state to record, when it is not the current one; `evaluation_due`: the
        iteration's evaluation failed, and the resume does it first."""
        if not self.backend.lockstep and self.rank != 0:  # replicas: rank 0 has it all
            return
        weights, ema = full_tensors(self.backend.params), full_tensors(self.ema.shadow) if self.ema else None
        optimizer = self.backend.full_optimizer_state()
        if self.rank != 0:
            return
        state = {
            "iteration": self.progress.iteration,
            "optimizer_steps": self.progress.optimizer_steps,
            "optimizer": optimizer,
            "rng": rng or rng_state(),
            "config": self.config.to_dict(),
            "evaluation_due": evaluation_due,
            **self.objective.state_dict(),
        }
        save_checkpoint(self.directory, weights, ema, state, keep=self.config.keep_checkpoints)
        self.progress.saved_iteration = self.progress.iteration

    def save_after_failure(self, what: str, rng: dict, record: dict | None = None) -> None:
        """After a failure that left the weights as the last finished iteration left them (a reward
        service down in a rollout's scoring or in an evaluation, an update out of memory before
        its first optimizer step), checkpoint that iteration with the random state it ended with,
        so a rerun resumes exactly there. `record`: that iteration's record, when its evaluation
        failed (logged without it; the resume evaluates first). One process only: a failed
        process's peers may be waiting in a collective."""
        if self.world != 1 or self.progress.iteration <= self.progress.saved_iteration:
            print(f"{what} failed; {self.where_a_rerun_resumes()}", file=sys.stderr)
            return
        if record is not None:
            append_metrics(self.metrics_path, record)
        self.save(rng=rng, evaluation_due=record is not None)
        print(
            f"{what} failed; saved a checkpoint of iteration {self.progress.iteration} in {self.directory} "
            "(rerun the same command to resume from there)",
            file=sys.stderr,
        )

    def report_update_failure(self, iteration: int, rng: dict, error: Exception) -> None:
        """An update that failed before its first optimizer step (most often out of memory in a
        backward pass) left the weights, optimizer and EMA as the last iteration left them: save
        that iteration. Later, the weights may be half-updated: only the last checkpoint is safe."""
        if not self.progress.weights_touched:
            self.save_after_failure(f"the update of iteration {iteration} (before its first optimizer step)", rng)
        else:
            print(
                f"the update of iteration {iteration} failed after changing the weights; {self.where_a_rerun_resumes()}",
                file=sys.stderr,
            )
        if isinstance(error, torch.OutOfMemoryError):
            print(
                f"out of memory in the update: a smaller micro_batch= than {self.config.micro_batch} (transitions per backward pass) "
                "computes the same update (up to rounding) in less memory, and a rerun may change it",
                file=sys.stderr,
            )

    def where_a_rerun_resumes(self) -> str:
        """Where a rerun of the same command picks up: the last checkpoint, or the start."""
        if self.progress.saved_iteration:
            return (
                f"a rerun resumes from the checkpoint of iteration {self.progress.saved_iteration} in {self.directory}"
            )
        return "a rerun starts over (no checkpoint yet)"

    def candidates(self) -> list[Path]:
        """The checkpoints a resume may load, in order: the last one (or, after a crash mid-swap,
        the one moved aside), then the earlier ones kept, newest first."""
        last = [self.directory, self.directory.with_name(self.directory.name + ".old")]
        return [path for path in last if path.is_dir()] + archived_checkpoints(self.out)

    def resume(self) -> bool:
        """Load the newest sound checkpoint when resuming is on and one exists; False to start over.
        A damaged one is named and the next older one taken; if all are damaged, the run stops."""
        candidates = self.candidates()
        if not (self.config.resume and candidates):
            return False
        damaged: dict[Path, str] = {}
        for directory in candidates:
            try:
                verify_checkpoint(directory)
                weights, ema, state = load_checkpoint(directory)
                break
            except Exception as error:  # noqa: BLE001  (safetensors raises its own type on a truncated file)
                damaged[directory] = f"{directory.name}: {error}"
        else:
            raise ValueError(
                f"{self.out}: no sound checkpoint to resume ({'; '.join(damaged.values())}); resume=false starts over"
            )
        if damaged and self.rank == 0:  # set aside (kept for a look), so that no later save keeps them
            for path in damaged:
                aside = path.with_name(path.name + ".damaged")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
            print(
                f"skipped damaged checkpoints ({'; '.join(damaged.values())}), now *.damaged; resuming from {directory}",
                file=sys.stderr,
            )
        saved = dict(state["config"])
        mismatched = [k for k in SAME_RUN_KEYS if k in saved and saved[k] != getattr(self.config, k)]
        if mismatched:
            differences = ", ".join(f"{k}: {saved.get(k)!r} there, {getattr(self.config, k)!r} now" for k in mismatched)
            raise ValueError(
                f"{self.out} holds a checkpoint of a different run ({differences}); use another out= or resume=false"
            )
        params = self.backend.params
        if set(weights) != set(params):
            raise ValueError(
                f"checkpoint weights do not match the model's trainable parameters ({len(weights)} vs {len(params)})"
            )
        load_full(params, weights)
        self.backend.load_optimizer_state(state["optimizer"])
        if self.ema is not None and ema is not None:
            load_full(self.ema.shadow, ema)
        self.objective.load_state_dict(state, str(directory))
        set_rng_state(state["rng"])
        progress = self.progress
        progress.iteration = progress.saved_iteration = state["iteration"]
        progress.evaluation_due = bool(state.get("evaluation_due"))
        # Checkpoints written before the counter was saved: AdamW's own count (not under ZeRO).
        progress.optimizer_steps = (
            state["optimizer_steps"] if "optimizer_steps" in state else adam_steps(self.backend.optimizer)
        )
        if self.rank == 0:  # the only writer of metrics.jsonl; other ranks rewriting it raced with it
            truncate_metrics(self.metrics_path, progress.iteration)
        return True

    def start_over_unless_resumed(self, resumed: bool) -> None:
        """A run that does not resume starts with an empty run directory: an earlier run's
        metrics, checkpoint and evaluation samples there would mix with this one's."""
        if resumed or self.rank != 0:
            return
        removed = forget_earlier_run(self.out)
        if removed:
            why = "resume=false" if not self.config.resume else "no checkpoint to resume from"
            print(
                f"{why}: starting over in {self.out}; removed the earlier run's {', '.join(removed)}", file=sys.stderr
            )
