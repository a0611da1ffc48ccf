"""The trainer: one loop that composes the five parts for every method of the solver layer.

Per iteration: prompts -> rollout by the method's plan (no grad) -> rewards -> credit -> the
objective's loss over inner epochs of minibatches -> EMA -> metrics -> evaluation -> checkpoint.
The parts live elsewhere: the policy (flowrl.policies), the plan (flowrl.samplers), the reward
(flowrl.rewards, scored by flowrl.scoring), the credit (flowrl.advantage) and the objective
(flowrl.objectives); launch, backend, checkpoints, evaluation and metric reduction have a module each.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowrl.rewards.combine import RewardSet
from flowrl.samplers.methods import get_method
from flowrl.samplers.rollout import rollout
from flowrl.samplers.shard import seeded_noise, shard_roots

from .adapters import Ema, Reference, add_lora, trainable_named_parameters, warmed_up_decay
from .backend import TrainingBackend
from .checkpointing import Checkpointer, Progress, StateParts
from .config import TrainConfig, is_text_source, method_config
from .evaluation import Evaluator
from .experience import Batch
from .global_credit import credit_global_batch
from .interrupts import StopRequests
from .launch import Processes, adopt_launch, choose_device, load_policy, refuse_sharded_backends, uses_autocast
from .llm.evaluation import TextEvaluator
from .llm.experience import TextExperience
from .llm.policy import load_text_policy
from .metrics import UpdateStats, combine_processes
from .objectives import OBJECTIVES, ObjectiveContext
from .policies.base import rollout_velocity
from .policies.loading import check_hub_policy
from .prompt_source import PromptSource
from .run_files import (
    append_metrics,
    finish_run_files,
    lock_run_directory,
    read_metrics,
    replace_directory,
    rng_state,
    write_config,
)
from .schedules import learning_rate
from .scoring import score_rollout


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        refuse_sharded_backends(dict(os.environ))
        config, offload = adopt_launch(config, dict(os.environ))
        self.config, self.out = config, Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        if not is_text_source(config.policy):  # unreachable, gated or missing: said before anything loads
            check_hub_policy(config.policy)
        self.device = choose_device(config)
        self.autocast = uses_autocast(config, self.device)
        self.processes = Processes(config, self.device, str(self.out / "logs"))
        self.rank, self.world = self.processes.rank, self.processes.world
        self.out.mkdir(parents=True, exist_ok=True)
        # One run per directory at a time (rank 0 writes its files), checked before any model loads.
        self.lock = lock_run_directory(self.out, "out=") if self.rank == 0 else None
        try:
            self._build(config, offload)
        except (
            BaseException
        ):  # a failed start frees the directory (a notebook keeps the traceback, and with it this object)
            self.close()
            raise

    def _build(self, config: TrainConfig, offload: str | None) -> None:
        """The parts: policy with adapters, backend, optimizer, EMA, objective, prompts, reward."""
        self.processes.start_trackers(config)
        self.text = is_text_source(config.policy)
        self.method = None if self.text else get_method(config.method)
        self.method_config = method_config(config)
        torch.manual_seed(config.seed)
        # Prompts and rewards first: a judge or reward server that is down is found before the policy loads.
        if not self.text:
            self.prompts = PromptSource(config.prompts, config.seed)
            self.reward = RewardSet.load(
                config.reward,
                config.reward_options,
                device=self.device,
                on_invalid=config.reward_invalid,
                batch_size=config.max_batch,
            )
        self.policy = load_text_policy(config.policy, self.device) if self.text else load_policy(config, self.device)
        network = self.policy.network
        self.lora = config.lora_rank > 0
        if self.lora:
            add_lora(network, config.lora_rank, config.lora_alpha, config.lora_targets)
        if config.gradient_checkpointing and hasattr(network, "enable_gradient_checkpointing"):
            network.enable_gradient_checkpointing()
        self.backend = TrainingBackend(config, network, self.device, self.world)
        self.params = trainable_named_parameters(network)
        self.reference = Reference(network, self.lora) if config.beta > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=config.lr, betas=tuple(config.adam_betas), weight_decay=config.weight_decay
        )
        self.backend.attach(self.params, self.optimizer, offload)
        self.ema = Ema(self.params, config.ema) if config.ema > 0 else None
        context = ObjectiveContext.of(
            config, self.params, self.ema, self.reference, self.policy.sample_shape, self.root_seeds
        )
        options = OBJECTIVES.configure(config.objective, config.objective_options)
        self.objective = OBJECTIVES.lookup(config.objective)(options, context)
        if self.text:  # the text side's rollout, rewards and evaluation (flowrl.llm)
            self.experience = TextExperience(
                config, self.policy, self.method_config, self.rank, self.world, self.processes.gather
            )
            self.evaluator = TextEvaluator(config, self.experience, self.out, self.final_weights, self.rank)
        else:
            self.experience = None
            shift = float(getattr(self.method_config, "shift", 1.0))
            self.evaluator = Evaluator(
                config, self.policy, self.reward, self.prompts, self.out, shift, self.final_weights, self.rank
            )
        self.progress = Progress()
        self.checkpoints = Checkpointer(
            self.out,
            config,
            self.rank,
            self.world,
            self.backend,
            self.ema,
            StateParts(self.objective, self.experience),
            self.progress,
        )
        self.metrics_path = self.out / "metrics.jsonl"

    # --- evaluation and export ----------------------------------------------------------------

    @contextlib.contextmanager
    def final_weights(self):
        """The weights to evaluate and export, whole on every process: EMA swapped in when enabled,
        and all-gathered when sharded. Every process must enter it together."""
        # Unsharded, only rank 0 uses them; sharded, every process holds a part of the EMA.
        swap = self.ema is not None and (self.backend.sharded is not None or self.rank == 0)
        with self.ema.swapped_in(self.params) if swap else contextlib.nullcontext(), self.backend.unsharded():
            yield

    def export(self) -> Path:
        """The trained weights (EMA when enabled) in out/final, as the policy exports them. Every
        process calls it (a sharded model is gathered); rank 0 writes."""
        directory = self.out / "final"
        with self.final_weights():
            if self.rank == 0:  # written beside, then swapped in: a failed export leaves the last one whole
                staging = directory.with_name("final.tmp")
                shutil.rmtree(staging, ignore_errors=True)
                self.policy.export(staging, self.lora, network=self.backend.exportable())
                replace_directory(staging, directory)
        return directory

    # --- the loop -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the run directory for another run (the end of `train` does it)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, Any]:
        config, progress, checkpoints = self.config, self.progress, self.checkpoints
        resumed = checkpoints.resume()
        checkpoints.start_over_unless_resumed(resumed)
        if self.rank == 0:  # written once the run is accepted: a refused launch leaves the folder as it was
            write_config(self.out, config.to_dict())
        started = time.perf_counter()
        fresh = self.processes.gather(
            progress.iteration == 0 and self.rank == 0 and not read_metrics(self.metrics_path)
        )[0]
        if self.rank == 0 and progress.iteration < config.iterations:
            where = (
                f"from iteration {progress.iteration} of {config.iterations}"
                if resumed
                else f"{config.iterations} iterations"
            )
            first = "; evaluating the starting model first" if fresh and config.eval_every else ""
            if config.minutes > 0:
                where += f" or {config.minutes:g} minutes, whichever comes first (minutes=0 lifts that cap)"
            print(
                f"training {config.method} on {config.policy}, {where}, into {self.out}{first} "
                "(Ctrl-C stops after the current iteration, with a checkpoint)",
                file=sys.stderr,
            )
        if fresh:
            record = {"iteration": 0, **(self.evaluator.run(0) if config.eval_every else {})}
            if self.rank == 0:
                append_metrics(self.metrics_path, record)
        if progress.evaluation_due:  # the resumed iteration's evaluation failed in the last run
            progress.evaluation_due = False
            if config.eval_every:
                self.evaluator.redo(progress.iteration, self.metrics_path, self.processes.log)
        bar = tqdm(total=config.iterations, initial=progress.iteration, desc="train", unit="it", disable=self.rank != 0)
        first_iteration, last, stalled = progress.iteration, {}, 0
        stopped_early, stopped_by = False, None
        with StopRequests("iteration") as stop:  # Ctrl-C / SIGTERM: end after this iteration, with a checkpoint
            while progress.iteration < config.iterations:
                iteration, random_state = progress.iteration, rng_state()
                try:
                    batch = self.collect(iteration)
                except Exception:  # rollout or reward: the weights are still those of the last iteration
                    checkpoints.save_after_failure(f"iteration {iteration + 1} (before its update)", random_state)
                    raise
                progress.weights_touched = False
                try:
                    update_stats = self.update(batch, iteration)
                except Exception as error:
                    checkpoints.report_update_failure(iteration + 1, random_state, error)
                    raise
                record = {
                    "iteration": iteration + 1,
                    **batch.stats,
                    **update_stats,
                    **self.objective.after_iteration(progress.optimizer_steps),
                }
                progress.iteration = iteration + 1
                at_end = progress.iteration == config.iterations
                out_of_time = config.minutes > 0 and time.perf_counter() - started > 60 * config.minutes
                flags = self.processes.gather((out_of_time, stop.signal))  # every process stops at the same iteration
                out_of_time = any(late for late, _ in flags)
                stopped_by = next((number for _, number in flags if number is not None), None)
                # An interruption adds no evaluation (one is slow on a large model), so the records
                # of an interrupted and resumed run are those of an uninterrupted one.
                if config.eval_every and (progress.iteration % config.eval_every == 0 or at_end or out_of_time):
                    before_evaluation = rng_state()
                    try:
                        record.update(self.evaluator.run(progress.iteration))
                    except Exception:  # the iteration itself is done: keep it, without its evaluation
                        checkpoints.save_after_failure(
                            f"the evaluation after iteration {progress.iteration}", before_evaluation, record
                        )
                        raise
                if self.rank == 0:
                    append_metrics(self.metrics_path, record)
                self.processes.log(record)
                if any(k.startswith("eval/") for k in record):
                    grid = self.out / "samples" / f"iter_{progress.iteration:05d}.png"
                    self.processes.log_image("samples", grid, progress.iteration)
                # a run that never trains from its start cannot learn (one that learned and now ties is done)
                stalled = stalled + 1 if update_stats.get("skipped_update") and stalled >= 0 else -1
                cannot_learn = bool(config.stall_iterations) and stalled >= config.stall_iterations
                if (
                    progress.iteration % config.checkpoint_every == 0
                    or at_end
                    or out_of_time
                    or stopped_by is not None
                    or cannot_learn
                ):
                    checkpoints.save()
                if cannot_learn:
                    raise ValueError(
                        f"no sample trained in the first {stalled} iterations (up to {progress.iteration}, checkpoint "
                        f"saved): every group's rewards tied (reward/std {record.get('reward/std', float('nan')):.3g})"
                        " or were dropped; check the reward, or give a group more samples or more noise "
                        "(stall_iterations=0 runs on regardless)"
                    )
                last = record
                evaluation = next(
                    ({"eval": f"{record[k]:.3f}"} for k in ("eval/overall", "eval/reward") if k in record), {}
                )
                bar.set_postfix(reward=f"{record['reward/mean']:.3f}", **evaluation)
                bar.update(1)
                if (out_of_time or stopped_by is not None) and not at_end:
                    stopped_early = True
                    break
            if not stopped_early:
                stopped_by = None  # a signal during the last iteration: the run finished anyway
        bar.close()
        if self.rank == 0:
            last_evaluation = finish_run_files(self.out)  # the reward curve
            last = last or last_evaluation  # nothing left to train: report the run's last evaluation
        self.export()  # before the process group ends: a sharded export needs it
        self.processes.end()
        return {
            "iterations": progress.iteration,
            "trained_now": progress.iteration - first_iteration,
            "resumed": resumed,
            "stopped_early": stopped_early,
            "stopped_by": stopped_by,
            "last": last,
            "rank": self.rank,
        }

    # --- one iteration ------------------------------------------------------------------------

    def velocity_fn(self, cond):
        """The policy's velocity for encoded prompts, under bf16 autocast when the run uses it (for
        a text policy: its completions' token log-probabilities)."""
        if self.text:
            return self.experience.scorer()
        return rollout_velocity(self.policy, cond, self.config.guidance, self.device.type if self.autocast else None)

    def root_seeds(self, iteration: int, roots: torch.Tensor) -> list[int]:
        """A seed per global root of this iteration: the same sample whichever process runs it."""
        base = (self.config.seed * 1_000_003 + iteration) * 65_537
        return [(base + int(g)) % (2**62) for g in roots]

    @torch.no_grad()
    def collect(self, iteration: int) -> Batch:
        """Rollout of this process's shard of the global batch, rewards, then credit over the whole
        batch (every process's rewards and rollout structure gathered, so a group split across
        processes is normalised as one)."""
        if self.text:
            with self.backend.unsharded():  # sharded: one all-gather, then generation of any length
                batch = self.experience.collect(iteration)
            self.objective.prepare(batch)
            return batch
        config, gather = self.config, self.processes.gather
        start = time.perf_counter()
        plan = self.method.plan(self.method_config, iteration)
        global_prompts = self.prompts.batch(iteration, config.prompts_per_iteration)
        shard = shard_roots(len(global_prompts), plan.group_size, self.world, self.rank)
        prompts = [global_prompts[int(p)] for p in shard.prompts]
        noise = None
        if plan.share_noise:  # one initial noise per prompt, whichever process holds its roots
            noise = seeded_noise(
                self.root_seeds(iteration, -1 - shard.roots // plan.group_size), self.policy.sample_shape
            )
        cond = self.policy.encode(prompts)
        with (
            self.backend.unsharded(),
            self.objective.sampling_weights(),
        ):  # sharded: one all-gather, then local forwards
            result = rollout(
                self.velocity_fn(cond),
                plan,
                len(prompts),
                self.policy.sample_shape,
                device=self.device,
                max_batch=config.max_batch,
                root_prompt=shard.root_prompt,
                root_seeds=self.root_seeds(iteration, shard.roots),
                noise=noise,
            )
        timings = {"time/rollout": time.perf_counter() - start}
        start = time.perf_counter()
        scores = score_rollout(self.reward, self.policy, result, prompts, shard.prompts, self.rank, self.world, gather)
        timings["time/reward"] = time.perf_counter() - start
        signal, stats = credit_global_batch(
            self.method,
            self.method_config,
            config,
            iteration,
            result,
            scores,
            shard,
            len(global_prompts),
            self.rank,
            gather,
        )
        transitions = result.transitions.select(signal.keep.to(result.transitions.logp.device))
        batch = Batch(
            iteration,
            result,
            prompts,
            cond,
            shard.roots,
            scores[0],
            signal.keep,
            transitions,
            signal.advantages,
            signal.weights,
            {**stats, **timings},
        )
        self.objective.prepare(batch)
        return batch

    def update(self, batch: Batch, iteration: int) -> dict[str, float]:
        """Inner epochs over shuffled minibatches of the kept transitions; one optimizer step per
        minibatch, gradient accumulation over micro-batches (exact: a shared normaliser).

        With several processes each shuffles its own transitions; an optimizer step takes a
        minibatch from every process (train_batch is per process) and the loss is normalised by
        the step's global transition count, so the mean-reduced gradient is that of one process
        holding the whole batch.
        """
        config, gather, backend = self.config, self.processes.gather, self.backend
        lr = learning_rate(iteration, config.lr, config.lr_warmup, config.iterations - 1, config.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        count = len(batch)
        counts = gather(count)
        most, total_count = max(counts), sum(counts)
        if most == 0:
            return {"skipped_update": 1.0}
        velocity = self.velocity_fn(batch.cond)
        step_size = config.train_batch or most
        generator = torch.Generator().manual_seed(config.seed * 7919 + iteration * 131 + self.rank)
        steps_per_epoch = math.ceil(most / step_size)
        stats = UpdateStats(steps_per_epoch * config.inner_epochs, count, config.inner_epochs)
        start = time.perf_counter()
        self.objective.begin_update(velocity, batch, stats.optimizer_steps)
        for _ in range(config.inner_epochs):
            order = self.objective.order(batch, generator)
            for first in range(0, steps_per_epoch * step_size, step_size):
                indices = order[first : first + step_size]
                sizes = gather(len(indices))
                normalizer = sum(sizes) / self.world
                backend.zero_grad()
                micros = self.objective.micro_batches(batch, indices, config.micro_batch)  # none if nothing kept
                # Collectives in backward passes (and FSDP's forwards): the same number of passes everywhere.
                idle = max(gather(len(micros))) - len(micros) if backend.lockstep else 0
                for i in range(idle):
                    backend.backward(self.objective.idle_loss(velocity, batch), last=not micros and i == idle - 1)
                for position, micro in enumerate(micros):
                    loss, micro_stats = self.objective.loss(velocity, batch, micro, normalizer)
                    if not bool(torch.isfinite(loss.detach())):  # before it reaches the weights
                        raise FloatingPointError(
                            f"the loss of iteration {iteration + 1} is {float(loss.detach())} (not finite); lower lr= "
                            f"(now {config.lr}) or check the reward"
                        )
                    backend.backward(loss, last=position == len(micros) - 1)
                    stats.add(micro_stats, len(micro))
                self.progress.weights_touched = True  # from here a failure may leave the weights half-updated
                norm = backend.step()
                if norm is not None:
                    stats.add_grad_norm(norm)
                self.progress.optimizer_steps += 1
                if self.ema is not None and self.progress.optimizer_steps % config.ema_every == 0:
                    self.ema.update(
                        self.params, warmed_up_decay(self.progress.optimizer_steps, config.ema, config.ema_warmup)
                    )
        broken = [name for name, p in self.params.items() if not bool(torch.isfinite(p.detach()).all())]
        if broken:
            raise FloatingPointError(
                f"iteration {iteration + 1} left non-finite weights ({broken[:3]}); lower lr= (now {config.lr}) "
                "or max_grad_norm="
            )
        values = combine_processes(gather((stats.values, count))) if self.world > 1 else stats.values
        return {**values, "lr": lr, "transitions/global": total_count, "time/update": time.perf_counter() - start}


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured; returns a summary."""
    return Trainer(config).train()
