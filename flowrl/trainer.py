"""The flow-GRPO trainer: rollout by the method's plan, reward, credit, clipped policy update.

One loop for every method of the solver layer. It reads top to bottom: setup, then per iteration
prompts -> rollout (no grad) -> rewards -> advantages -> inner epochs of minibatch updates ->
EMA -> metrics -> evaluation -> checkpoint. Image specifics stay in the policy and the plans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowrl.samplers.matching import MatchingPoints, MatchingScore, matching_points, score_matching
from flowrl.samplers.methods import get_method
from flowrl.samplers.rollout import Rollout, rollout, score_transitions
from flowrl.samplers.shard import merge_rollouts, rollout_metadata, seeded_noise, shard_roots

from flowrl.rewards.combine import RewardScores, RewardSet, win_rates, within_group_pairs

from .adapters import Ema, Reference, add_lora, ramped_decay, trainable_named_parameters, warmed_up_decay
from .advantage import zero_variance_mask
from .config import TrainConfig, method_config, toyshapes_prompt_spec
from .interrupts import StopRequests
from .losses import gaussian_kl, policy_loss
from .losses.nft import nft_loss
from .policies.base import TextConditioning, rollout_velocity
from .policies.diffusers_common import export_transformer
from .policies.toy import ToyPolicy
from .schedules import learning_rate
from .sharding import (
    check_sharding_world,
    env_flag,
    full_optimizer_state,
    full_tensors,
    launched_with_fsdp,
    load_full,
    plain_replica,
    shard_optimizer_state,
    shard_transformer,
    total_norm,
    unsharded,
)
from .run_files import (
    append_metrics,
    complete_record,
    draw_curve,
    forget_earlier_run,
    load_checkpoint,
    lock_run_directory,
    read_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_metrics,
)
from . import zero as deepspeed_zero


def load_policy(config: TrainConfig, device: torch.device):
    """The policy named by config.policy: the toy model, or an SD3/FLUX pipeline (hub id or folder).

    Diffusers weights load in bf16 on CUDA when only LoRA adapters train (weights_dtype=auto), and
    in float32 otherwise: full fine-tuning keeps float32 master weights for AdamW.
    """
    from .policies.loading import load_policy as load

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = dtypes.get(config.weights_dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and config.lora_rank > 0 else torch.float32
    return load(config.policy, device=device, dtype=dtype, resolution=config.resolution)


class PromptSource:
    """Prompts per iteration as a function of (seed, iteration, rank): resuming needs no data state.

    ToyShapes prompts are drawn category-balanced (a category uniformly, then a prompt in it), as
    the evaluation weighs categories equally; uniform over prompts would be dominated by the
    combinatorially large categories (color attribution, position). `toyshapes:SPLIT:CATEGORY,...`
    draws among those categories only. Text files: uniform over lines.
    """

    def __init__(self, spec: str, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self.toyshapes_split, self.toyshapes_categories = None, None
        if spec.startswith("toyshapes:"):
            from flowrl.benchmarks.toyshapes.prompts import prompts_for

            self.toyshapes_split, self.toyshapes_categories = toyshapes_prompt_spec(spec)
            self.pool = [p.text for p in prompts_for(self.toyshapes_split, self.toyshapes_categories)]
        else:
            self.pool = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
        if not self.pool:
            raise ValueError(f"prompts={spec!r} yields no prompts")

    def batch(self, iteration: int, n: int) -> list[str]:
        """The iteration's global prompt list (the same on every process; each runs a shard)."""
        if self.toyshapes_split is not None:
            from flowrl.benchmarks.toyshapes.prompts import sample_prompts

            seed = hash((self.seed, iteration)) & 0x7FFFFFFF
            return [p.text for p in sample_prompts(n, self.toyshapes_split, seed=seed, categories=self.toyshapes_categories)]
        rng = random.Random(f"{self.seed}/{iteration}")
        return [rng.choice(self.pool) for _ in range(n)]


def impute_group_means(rewards: torch.Tensor, valid: torch.Tensor, groups: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """rewards with each invalid value replaced by the mean of its group's valid scored values (0
    when none is valid), so a failed score neither rewards nor punishes its group's other samples."""
    rewards = rewards.clone()
    for group in groups[~valid].unique():
        members = groups == group
        good = members & valid & scored
        rewards[members & ~valid] = rewards[good].mean() if bool(good.any()) else 0.0
    return rewards


def component_stats(components: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """reward/<name>/mean over every process's scored samples (NaN marks an invalid score)."""
    names = components[0] if components else {}
    return {f"reward/{name}/mean": float(torch.cat([c[name] for c in components]).nanmean()) for name in names}


@dataclass
class Batch:
    """One iteration's experience: the rollout, its rewards and the per-transition learning signal."""

    rollout: Rollout
    prompts: list[str]
    cond: TextConditioning  # the encoded prompts, reused by the update
    rewards: torch.Tensor  # [N] (0 for samples the credit does not use)
    advantages: torch.Tensor  # [M'] for the kept transitions
    weights: torch.Tensor  # [M']
    keep: torch.Tensor  # [M] bool
    stats: dict[str, float]
    points: MatchingPoints | None = None  # objective=matching or nft: one flow-matching point per kept transition


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer steps taken so far, as AdamW counts them in its state (0 before the first):
    the step count of a checkpoint written before the trainer saved its own."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)


def matching_kl(scored: MatchingScore, ref: MatchingScore | None) -> torch.Tensor | None:
    """[M] AWM's KL of matching points: the squared velocity difference to the reference (None without one)."""
    return None if ref is None else (scored.velocity.float() - ref.velocity.float()).pow(2).flatten(1).mean(1)


# accelerate's launcher sets these for engines the trainer does not drive (FSDP and DeepSpeed ZeRO
# 1-2 it does: sharding.py, zero.py).
UNSUPPORTED_BACKENDS = {"ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharded_backends(environ: dict[str, str]) -> None:
    """Fail before any model loads when accelerate was launched with Megatron-LM: the trainer
    would silently run without it, with none of the memory savings the launch asked for."""
    asked = [name for key, name in UNSUPPORTED_BACKENDS.items() if env_flag(environ, key)]
    if asked:
        raise ValueError(
            f"accelerate was launched with {' and '.join(asked)}, which flowrl does not support. For sharded training "
            "use FSDP (`accelerate launch --use_fsdp --num_processes N -m flowrl train ...`, or fsdp=true in any multi-process "
            "launch) or DeepSpeed ZeRO 1-2 (`--use_deepspeed --zero_stage 2`, or zero_stage=2); for data parallel "
            "`accelerate launch --multi_gpu --num_processes N -m flowrl train ...`. LoRA (lora_rank > 0) and "
            "gradient_checkpointing=true keep the memory per process small."
        )


def adopt_launch(config: TrainConfig, environ: dict[str, str]) -> tuple[TrainConfig, str | None]:
    """The config with the sharding an accelerate launch asked for (--use_fsdp: fsdp=true;
    --use_deepspeed: its ZeRO stage, 2 when not given), and the DeepSpeed optimizer offload device."""
    from .config import validate

    changes: dict[str, Any] = {}
    offload = None
    if launched_with_fsdp(environ) and not config.fsdp:
        changes["fsdp"] = True
    if deepspeed_zero.launched_with_deepspeed(environ):
        settings = deepspeed_zero.launch_settings(environ)
        stage = 2 if settings["stage"] is None else int(settings["stage"])
        if config.zero_stage and config.zero_stage != stage:
            raise ValueError(f"config key zero_stage={config.zero_stage}, but accelerate was launched with DeepSpeed ZeRO stage {stage}; make them agree")
        if stage not in (1, 2):
            raise ValueError(f"accelerate was launched with DeepSpeed ZeRO stage {stage}; flowrl drives stages 1 and 2 "
                             "(stage 3 partitions the weights: use --use_fsdp, or fsdp=true)")
        if settings["clipping"] is not None and settings["clipping"] != config.max_grad_norm:
            raise ValueError(f"accelerate was launched with DeepSpeed gradient clipping {settings['clipping']}, but config key "
                             f"max_grad_norm={config.max_grad_norm}; flowrl clips by max_grad_norm: set it, or drop the launch's value")
        changes["zero_stage"] = stage
        offload = settings["offload"]
    if not changes:
        return config, offload
    config = dataclasses.replace(config, **changes)
    validate(config)
    return config, offload


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        refuse_sharded_backends(dict(os.environ))
        config, offload = adopt_launch(config, dict(os.environ))
        self.config = config
        self.out = Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else ("cpu" if config.device == "auto" else config.device))
        # bf16 autocast of the model calls: on CUDA by default, on the CPU when asked (fast with AMX).
        self.autocast = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and self.device.type == "cuda")
        from accelerate import Accelerator

        trackers = [t for t in config.log_with.split(",") if t]
        self.accelerator = Accelerator(cpu=self.device.type == "cpu", log_with=trackers or None, project_dir=str(self.out / "logs"))
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if config.fsdp or config.zero_stage:
            check_sharding_world(self.world, os.environ, "fsdp" if config.fsdp else "zero_stage")
        self.out.mkdir(parents=True, exist_ok=True)
        # One run per directory at a time (rank 0 writes its files), checked before any model loads.
        self.lock = lock_run_directory(self.out, "out=") if self.rank == 0 else None
        try:
            self._build(config, trackers, offload)
        except BaseException:  # a failed start frees the directory (a notebook keeps the traceback, and with it this object)
            self.close()
            raise

    def _build(self, config: TrainConfig, trackers: list[str], offload: str | None) -> None:
        """The rest of the set-up: trackers, policy, adapters, optimizer, EMA, prompts, reward."""
        if trackers:
            # Flat scalars only: trackers take numbers and strings, not nested dicts.
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()}
            self.accelerator.init_trackers("flowrl", config=flat)
        self.method = get_method(config.method)
        self.method_config = method_config(config)
        torch.manual_seed(config.seed)
        self.policy = load_policy(config, self.device)
        self.toy = isinstance(self.policy, ToyPolicy)
        transformer = self.policy.transformer
        self.lora = config.lora_rank > 0
        if self.lora:
            add_lora(transformer, config.lora_rank, config.lora_alpha, config.lora_targets)
        if config.gradient_checkpointing and hasattr(transformer, "enable_gradient_checkpointing"):
            transformer.enable_gradient_checkpointing()
        # The FSDP units when sharding; None for replicated data parallel.
        self.sharded = shard_transformer(transformer, self.device, os.environ) if config.fsdp else None
        self.params = trainable_named_parameters(transformer)
        self.reference = Reference(transformer, self.lora) if config.beta > 0 else None
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=config.lr, betas=tuple(config.adam_betas), weight_decay=config.weight_decay)
        # DeepSpeed ZeRO: the engine partitions this optimizer's state (and the gradients), None otherwise.
        self.zero = deepspeed_zero.wrap(transformer, self.optimizer, config.zero_stage, config.max_grad_norm, offload, config.micro_batch) if config.zero_stage else None
        # Whether backward passes hold collectives, so every process must make the same number.
        self.lockstep = self.sharded is not None or self.zero is not None
        self.ema = Ema(self.params, config.ema) if config.ema > 0 else None
        # nft_sampler=old: DiffusionNFT's sampling policy, an average with a decay that ramps up.
        self.old = Ema(self.params, 0.0) if config.objective == "nft" and config.nft_sampler == "old" else None
        self.prompts = PromptSource(config.prompts, config.seed)
        self.reward = RewardSet.load(config.reward, config.reward_options, device=self.device, on_invalid=config.reward_invalid, batch_size=config.max_batch)
        self.iteration = 0
        self.saved_iteration = 0  # the iteration of the last checkpoint written (or resumed from)
        self.evaluation_due = False  # resumed after the evaluation of that iteration failed
        self.weights_touched = False  # this iteration's update has started an optimizer step
        self.optimizer_steps = 0  # over the whole run (EMA warm-up and interval, the NFT sampler's decay)
        self.metrics_path = self.out / "metrics.jsonl"
        self.checkpoint_dir = self.out / "checkpoint"
        if self.rank == 0:  # one writer per run-directory file
            (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    # --- checkpoints --------------------------------------------------------------------------

    def save(self, rng: dict | None = None, evaluation_due: bool = False) -> None:
        """Checkpoint on rank 0; every process calls it (sharded tensors are gathered first), and a
        sharded run writes the same full tensors as an unsharded one, so either resumes the other.
        `rng`: the random state to record, when it is not the current one; `evaluation_due`: the
        iteration's evaluation failed, and the resume does it first."""
        if not self.lockstep and self.rank != 0:  # replicas: rank 0 has it all
            return
        weights, ema = full_tensors(self.params), full_tensors(self.ema.shadow) if self.ema else None
        if self.zero is not None:  # each process holds a partition of the optimizer state
            optimizer = deepspeed_zero.full_optimizer_state(self.zero, list(self.params.values()))
        else:
            optimizer = full_optimizer_state(self.optimizer)
        if self.rank != 0:
            return
        state = {"iteration": self.iteration, "optimizer_steps": self.optimizer_steps, "optimizer": optimizer, "rng": rng or rng_state(),
                 "config": self.config.to_dict(), "evaluation_due": evaluation_due}
        if self.old is not None:
            state["nft_old"] = {n: v.detach().cpu().clone() for n, v in self.old.shadow.items()}
        save_checkpoint(self.checkpoint_dir, weights, ema, state)
        self.saved_iteration = self.iteration

    def save_after_failure(self, what: str, rng: dict, record: dict | None = None) -> None:
        """After a failure that left the weights as the last finished iteration left them (a reward
        service down in a rollout's scoring or in an evaluation, an update out of memory before
        its first optimizer step), checkpoint that iteration with the random state it ended with,
        so a rerun resumes exactly there. `record`: that iteration's record, when its evaluation
        failed (logged without it; the resume evaluates first). One process only: a failed
        process's peers may be waiting in a collective."""
        if self.world != 1 or self.iteration <= self.saved_iteration:
            print(f"{what} failed; {self.where_a_rerun_resumes()}", file=sys.stderr)
            return
        if record is not None:
            append_metrics(self.metrics_path, record)
        self.save(rng=rng, evaluation_due=record is not None)
        print(f"{what} failed; saved a checkpoint of iteration {self.iteration} in {self.checkpoint_dir} "
              "(rerun the same command to resume from there)", file=sys.stderr)

    def where_a_rerun_resumes(self) -> str:
        """Where a rerun of the same command picks up: the last checkpoint, or the start."""
        if self.saved_iteration:
            return f"a rerun resumes from the checkpoint of iteration {self.saved_iteration} in {self.checkpoint_dir}"
        return "a rerun starts over (no checkpoint yet)"

    def try_resume(self) -> bool:
        directory = self.checkpoint_dir
        if not directory.is_dir() and directory.with_name(directory.name + ".old").is_dir():
            directory = directory.with_name(directory.name + ".old")  # a crash mid-swap
        if not (self.config.resume and directory.is_dir()):
            return False
        weights, ema, state = load_checkpoint(directory)
        saved = dict(state["config"])
        mismatched = [k for k in ("policy", "method", "method_options", "lora_rank", "lora_targets", "seed", "prompts", "reward", "reward_options", "prompts_per_iteration") if k in saved and saved[k] != getattr(self.config, k)]
        if mismatched:
            raise ValueError(f"{self.out} holds a checkpoint of a different run ({', '.join(f'{k}: {saved.get(k)!r} there, {getattr(self.config, k)!r} now' for k in mismatched)}); use another out= or resume=false")
        if set(weights) != set(self.params):
            raise ValueError(f"checkpoint weights do not match the model's trainable parameters ({len(weights)} vs {len(self.params)})")
        load_full(self.params, weights)
        if self.zero is not None:
            deepspeed_zero.load_state(self.zero, list(self.params.values()), state["optimizer"])
        else:
            self.optimizer.load_state_dict(shard_optimizer_state(state["optimizer"], list(self.params.values())))
        if self.ema is not None and ema is not None:
            load_full(self.ema.shadow, ema)
        if self.old is not None:
            if "nft_old" not in state:
                raise ValueError(f"{directory} has no nft_sampler=old average to resume (it was written by a run without it); use another out= or resume=false")
            load_full(self.old.shadow, state["nft_old"])
        set_rng_state(state["rng"])
        self.iteration = self.saved_iteration = state["iteration"]
        self.evaluation_due = bool(state.get("evaluation_due"))
        # Checkpoints written before the counter was saved: AdamW's own count (not under ZeRO).
        self.optimizer_steps = state["optimizer_steps"] if "optimizer_steps" in state else adam_steps(self.optimizer)
        if self.rank == 0:  # the only writer of metrics.jsonl; other ranks rewriting it raced with it
            truncate_metrics(self.metrics_path, self.iteration)
        return True

    # --- one iteration --------------------------------------------------------------------------

    def velocity_fn(self, cond):
        base = rollout_velocity(self.policy, cond, self.config.guidance)
        if not self.autocast:
            return base

        def velocity(x, sigma, prompt_index):
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return base(x, sigma, prompt_index).float()

        return velocity

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order; [value] in a single process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def root_seeds(self, iteration: int, roots: torch.Tensor) -> list[int]:
        """A seed per global root of this iteration: the same sample whichever process runs it."""
        base = (self.config.seed * 1_000_003 + iteration) * 65_537
        return [(base + int(g)) % (2**62) for g in roots]

    def score(self, images: torch.Tensor, prompts: list[str], groups: torch.Tensor) -> RewardScores:
        """This process's samples scored by the reward set. Pairwise terms judge every pair within
        a group (global prompt id) over the whole batch: images are gathered, each process judges
        every world-th pair, and the judgments are gathered back, so no pair is judged twice."""
        components = self.reward.score_pointwise(images, prompts)
        if self.reward.pairwise:
            count, offset = images.shape[0], 0
            all_images, all_prompts, all_groups = images, prompts, groups
            if self.world > 1:
                parts = self.gather((images.cpu(), prompts, groups))
                offset = sum(len(part[1]) for part in parts[: self.rank])
                all_images = torch.cat([part[0] for part in parts]).to(images.device)
                all_prompts = [p for part in parts for p in part[1]]
                all_groups = torch.cat([part[2] for part in parts])
            index_a, index_b = within_group_pairs(all_groups)
            mine = torch.arange(len(index_a))[self.rank :: self.world]
            for term in self.reward.terms:
                if term.pairwise:
                    probs = torch.empty(len(index_a))
                    judged = self.reward.judge_pairs(term, all_images, all_prompts, index_a[mine], index_b[mine])
                    for rank, part in enumerate(self.gather(judged)):
                        probs[rank :: self.world] = part
                    rates = win_rates(index_a, index_b, probs, len(all_groups))
                    components[term.name] = (rates[offset : offset + count], torch.ones(count, dtype=torch.bool))
        return self.reward.combine(components)

    @torch.no_grad()
    def collect(self, iteration: int) -> Batch:
        """Rollout of this process's shard of the global batch, rewards, then credit over the whole
        batch (every process's rewards and rollout structure gathered, so a group split across
        processes is normalised as one)."""
        config = self.config
        timings = {}
        start = time.perf_counter()
        plan = self.method.plan(self.method_config, iteration)
        global_prompts = self.prompts.batch(iteration, config.prompts_per_iteration)
        shard = shard_roots(len(global_prompts), plan.group_size, self.world, self.rank)
        prompts = [global_prompts[int(p)] for p in shard.prompts]
        noise = None
        if plan.share_noise:  # one initial noise per prompt, whichever process holds its roots
            noise = seeded_noise(self.root_seeds(iteration, -1 - shard.roots // plan.group_size), self.policy.sample_shape)
        cond = self.policy.encode(prompts)
        with unsharded(self.sharded), self.sampling_weights():  # sharded: one all-gather, then local forwards of any number
            result = rollout(
                self.velocity_fn(cond), plan, len(prompts), self.policy.sample_shape, device=self.device, max_batch=config.max_batch,
                root_prompt=shard.root_prompt, root_seeds=self.root_seeds(iteration, shard.roots), noise=noise,
            )
        timings["time/rollout"] = time.perf_counter() - start
        start = time.perf_counter()
        scored = torch.nonzero(result.reward_mask).flatten()
        images = self.policy.decode(result.samples[scored])
        scores = self.score(images, [prompts[int(p)] for p in result.prompt[scored]], shard.prompts[result.prompt[scored]])
        rewards = torch.zeros(len(result.samples))
        valid = torch.ones(len(result.samples), dtype=torch.bool)
        rewards[scored], valid[scored] = scores.total, scores.valid
        components = {name: torch.where(scores.valid, values, torch.nan) for name, values in scores.components.items()}
        timings["time/reward"] = time.perf_counter() - start

        # Credit over the global batch; this process's transitions are one contiguous block of it.
        gathered = self.gather((rollout_metadata(result), rewards, shard.prompts, shard.roots, valid, components))
        whole = merge_rollouts([g[0] for g in gathered], [g[2] for g in gathered], [g[3] for g in gathered])
        all_rewards = torch.cat([g[1] for g in gathered])
        all_valid = torch.cat([g[4] for g in gathered])
        invalid_prompts = whole.prompt[~all_valid].unique()
        if len(invalid_prompts):  # reward_invalid=drop: neutral values in, the whole group out of the update
            all_rewards = impute_group_means(all_rewards, all_valid, whole.prompt, whole.reward_mask.cpu().bool())
        first = sum(len(g[0].transitions) for g in gathered[: self.rank])
        local = slice(first, first + len(result.transitions))
        credit = self.method.credit(whole, all_rewards, self.method_config, iteration)
        all_scored = torch.nonzero(whole.reward_mask).flatten()
        constant = zero_variance_mask(all_rewards[all_scored], whole.prompt[all_scored])
        constant_prompts = whole.prompt[all_scored][constant].unique()
        keep = credit.mask.cpu()[local].clone()
        if config.drop_zero_variance and len(constant_prompts):
            keep &= ~torch.isin(whole.transitions.prompt[local], constant_prompts)
        keep &= ~torch.isin(whole.transitions.prompt[local], invalid_prompts)
        advantages = credit.advantages.cpu()[local][keep]
        if config.advantage_clip > 0:
            advantages = advantages.clamp(-config.advantage_clip, config.advantage_clip)
        kept_advantages = torch.cat(self.gather(advantages))
        scored_rewards = all_rewards[all_scored]
        stats = {
            "reward/mean": float(scored_rewards.mean()),
            "reward/std": float(scored_rewards.std(unbiased=False)),
            "reward/max": float(scored_rewards.max()),
            **component_stats([g[5] for g in gathered]),
            "reward/invalid": float((~all_valid[all_scored]).sum()),
            "zero_variance_prompts": float(len(constant_prompts)) / len(global_prompts),
            "advantage/mean": float(kept_advantages.mean()) if len(kept_advantages) else 0.0,
            "advantage/std": float(kept_advantages.std(unbiased=False)) if len(kept_advantages) else 0.0,
            "nfe": float(whole.nfe),
            "samples": float(len(all_scored)),
            "transitions/trained": float(len(kept_advantages)),
            **{k: v for k, v in credit.stats.items() if not k.startswith("reward/")},
            **timings,
        }
        points = None
        if config.objective in ("matching", "nft"):
            kept = result.transitions.select(keep.to(result.transitions.logp.device))
            seeds = self.matching_seeds(iteration, shard.roots[result.node_root[kept.child].cpu()], kept.step.cpu())
            points = matching_points(result, kept, seeded_noise(seeds, self.policy.sample_shape))
        return Batch(result, prompts, cond, rewards, advantages, credit.weight.cpu()[local][keep], keep, stats, points)

    def matching_seeds(self, iteration: int, roots: torch.Tensor, steps: torch.Tensor) -> list[int]:
        """A seed per (global root, grid step) for the fresh noise of a matching point: the same
        point whichever process trains it."""
        return [(seed * 1_000_033 + int(step) + 1) % (2**62) for seed, step in zip(self.root_seeds(iteration, roots), steps)]

    def score_part(self, velocity, batch: Batch, transitions, micro: torch.Tensor, old_scores: torch.Tensor | None):
        """(logp with grad, logp_old, KL values or None) of the micro-batch `micro` of kept transitions."""
        # The reference pass comes first: under full fine-tuning it swaps the initial weights in
        # place, which must not happen between the forward with grad and its backward.
        if batch.points is None:
            part = transitions.select(micro.to(transitions.logp.device))
            ref = self.reference_pass(lambda: score_transitions(velocity, part, self.config.max_batch))
            step = score_transitions(velocity, part, self.config.max_batch)
            kl = None if ref is None else gaussian_kl(step.mean, ref.mean, step.std.detach())
            return step.logp, part.logp, kl
        _, scored, logp_old, kl = self.score_points(velocity, batch, micro, old_scores)
        return scored.logp, logp_old, kl

    def score_points(self, velocity, batch: Batch, micro: torch.Tensor, old_scores: torch.Tensor | None):
        """(points, their score with grad, the old score (`matching_value`), KL values or None) of
        the micro-batch `micro` of matching points; the reference pass first (see score_part)."""
        part = batch.points.select(micro)
        ref = self.reference_pass(lambda: score_matching(velocity, part, self.config.max_batch))
        scored = score_matching(velocity, part, self.config.max_batch)
        now = self.matching_value(scored)
        # One optimizer step per iteration from the sampling weights: they have not moved, so old = new exactly.
        old = now.detach() if old_scores is None else old_scores[micro].to(now.device)
        return part, scored, old, matching_kl(scored, ref)

    def matching_value(self, score: MatchingScore) -> torch.Tensor:
        """What the matching objectives compare with the old weights: the velocity (nft) or AWM's logp."""
        return score.velocity if self.config.objective == "nft" else score.logp

    def reference_pass(self, score):
        """score() under the reference policy, without grad; None when there is no KL."""
        if self.reference is None:
            return None
        with torch.no_grad(), self.reference.active():
            return score()

    def idle_pass(self, velocity, batch: Batch, last: bool = False) -> None:
        """A forward and backward with zero gradient (any one transition, loss times 0): keeps a
        process with fewer micro-batches in step with the others' FSDP or ZeRO collectives."""
        transitions = batch.rollout.transitions
        logp, _, _ = self.score_part(velocity, batch, transitions, torch.zeros(1, dtype=torch.long), None)
        self.backward(logp.sum() * 0, last=last)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """loss.backward(), through the DeepSpeed engine under ZeRO (`last`: the step's final pass)."""
        if self.zero is not None:
            deepspeed_zero.backward(self.zero, loss, last)
        else:
            loss.backward()

    @property
    def lagged_sampler(self) -> Ema | None:
        """The average that samples the rollouts (nft_sampler=ema or old), or None for the current weights."""
        if self.config.objective != "nft":
            return None
        return {"ema": self.ema, "old": self.old}.get(self.config.nft_sampler)

    def sampling_weights(self) -> contextlib.AbstractContextManager:
        """The weights that sample the rollouts: the lagged average swapped in, else the current ones."""
        sampler = self.lagged_sampler
        return sampler.swapped_in(self.params) if sampler is not None else contextlib.nullcontext()

    def advance_old_sampler(self) -> dict[str, float]:
        """nft_sampler=old, after an iteration: move the sampling average towards the trained
        weights with the decay of the optimizer steps so far (DiffusionNFT's schedule)."""
        if self.old is None:
            return {}
        decay = ramped_decay(self.optimizer_steps, *self.config.nft_old_decay)
        self.old.update(self.params, decay)
        return {"nft/sampler_decay": decay}

    @torch.no_grad()
    def matching_old(self, velocity, points: MatchingPoints) -> torch.Tensor:
        """The matching score of every point before this iteration's update: the log-likelihood
        proxy [M] (objective=matching) or the velocity [M, ...] (objective=nft)."""
        indices = torch.arange(len(points))
        scores = [score_matching(velocity, points.select(i), self.config.max_batch) for i in indices.split(self.config.micro_batch)]
        return torch.cat([self.matching_value(s).cpu() for s in scores])

    def nft_part(self, velocity, batch: Batch, micro: torch.Tensor, old_scores: torch.Tensor | None, normalizer: float):
        """(loss, stats) of DiffusionNFT on the micro-batch `micro` of matching points."""
        part, scored, old, kl = self.score_points(velocity, batch, micro, old_scores)
        return nft_loss(
            scored.velocity, old, part.noise - part.x0, batch.advantages[micro], nft_beta=self.config.nft_beta, scale=self.config.advantage_clip,
            weight=batch.weights[micro].to(scored.velocity.device), normalizer=normalizer, kl_values=kl, beta=self.config.beta,
            sigma=part.sigma if self.config.nft_weighting == "adaptive" else None,
        )

    def average_gradients(self) -> None:
        """All-reduce the gradients (mean over processes) in one flat buffer; a parameter without
        a gradient on some process counts as zero there, so every process joins the same call."""
        if self.world == 1 or self.lockstep:  # FSDP's and ZeRO's backward passes reduce (average) them themselves
            return
        import torch.distributed as dist

        params = list(self.params.values())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def update(self, batch: Batch, iteration: int) -> dict[str, float]:
        """Inner epochs over shuffled minibatches of the kept transitions; one optimizer step per
        minibatch, gradient accumulation over micro-batches (exact: a shared normaliser).

        With several processes each shuffles its own transitions; an optimizer step takes a
        minibatch from every process (train_batch is per process) and the loss is normalised by
        the step's global transition count, so the mean-reduced gradient is that of one process
        holding the whole batch.
        """
        config = self.config
        lr = learning_rate(iteration, config.lr, config.lr_warmup, config.iterations - 1, config.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        transitions = batch.rollout.transitions.select(batch.keep.to(batch.rollout.transitions.logp.device))
        count = len(transitions)
        counts = self.gather(count)
        most, total_count = max(counts), sum(counts)
        if most == 0:
            return {"skipped_update": 1.0}
        velocity = self.velocity_fn(batch.cond)
        step_size = config.train_batch or most
        generator = torch.Generator().manual_seed(config.seed * 7919 + iteration * 131 + self.rank)
        sums: dict[str, float] = {}
        steps_per_epoch = math.ceil(most / step_size)
        optimizer_steps = steps_per_epoch * config.inner_epochs
        start = time.perf_counter()
        old_scores = None
        if batch.points is not None and (optimizer_steps > 1 or self.lagged_sampler is not None):  # later steps (or the sampler) differ from the trained weights: score them all first
            with self.sampling_weights():
                old_scores = self.matching_old(velocity, batch.points)
        loss_options = {"eps_low": config.clip_low, "eps_high": config.clip_high} if config.loss in ("clip", "gspo") else {}
        for _ in range(config.inner_epochs):
            order = torch.randperm(count, generator=generator)
            for first in range(0, steps_per_epoch * step_size, step_size):
                indices = order[first : first + step_size]
                sizes = self.gather(len(indices))
                step_total = sum(sizes)
                if self.zero is None:  # the engine zeroes its own (its offloaded partitions keep their buffers)
                    self.optimizer.zero_grad(set_to_none=True)
                micros = [m for m in indices.split(config.micro_batch) if len(m)]  # none when this process kept nothing
                # Collectives in backward passes (and FSDP's forwards): the same number of passes everywhere.
                idle = math.ceil(max(sizes) / config.micro_batch) - len(micros) if self.lockstep else 0
                for i in range(idle):
                    self.idle_pass(velocity, batch, last=not micros and i == idle - 1)
                for position, micro in enumerate(micros):
                    if config.objective == "nft":
                        loss, stats = self.nft_part(velocity, batch, micro, old_scores, step_total / self.world)
                    else:
                        logp, logp_old, kl = self.score_part(velocity, batch, transitions, micro, old_scores)
                        loss, stats = policy_loss(
                            logp, logp_old, batch.advantages[micro].to(logp.device), loss=config.loss, loss_options=loss_options,
                            kl_values=kl, beta=config.beta, weight=batch.weights[micro].to(logp.device), normalizer=step_total / self.world,
                        )
                    self.backward(loss, last=position == len(micros) - 1)
                    for key, value in stats.items():
                        if key.startswith("advantage/"):
                            continue  # collect() reports them exactly, over the global batch
                        if key.startswith("loss/"):  # partial sums of this step's loss: average the steps
                            sums[key] = sums.get(key, 0.0) + value / optimizer_steps
                        elif key in ("ratio/min", "ratio/max"):
                            pick = min if key == "ratio/min" else max
                            sums[key] = pick(sums.get(key, value), value)
                        else:  # per-element means: weight by the micro-batch's share
                            sums[key] = sums.get(key, 0.0) + value * len(micro) / (count * config.inner_epochs)
                self.weights_touched = True  # from here a failure may leave the weights half-updated
                if self.zero is not None:  # the engine clips by max_grad_norm and steps
                    norm = deepspeed_zero.step(self.zero)
                else:
                    self.average_gradients()
                    if config.max_grad_norm > 0:
                        norm = total_norm(torch.nn.utils.clip_grad_norm_(list(self.params.values()), config.max_grad_norm))
                    self.optimizer.step()
                if config.max_grad_norm > 0:
                    sums["grad_norm"] = max(sums.get("grad_norm", 0.0), norm)
                self.optimizer_steps += 1
                if self.ema is not None and self.optimizer_steps % config.ema_every == 0:
                    self.ema.update(self.params, warmed_up_decay(self.optimizer_steps, config.ema, config.ema_warmup))
        if self.world > 1:
            sums = self.combine_update_stats(self.gather((sums, count)))
        sums["lr"] = lr
        sums["transitions/global"] = total_count
        sums["time/update"] = time.perf_counter() - start
        return sums

    @staticmethod
    def combine_update_stats(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
        """One process's update statistics from every process's: loss terms average (each process
        holds its share of the global loss), ratio extremes take the extreme, per-transition means
        weigh by transition counts, the rest (grad_norm) are the same everywhere."""
        total = sum(count for _, count in parts) or 1
        combined: dict[str, float] = {}
        for key in dict.fromkeys(k for stats, _ in parts for k in stats):
            values = [stats.get(key, 0.0) for stats, _ in parts]
            if key.startswith("loss/"):
                combined[key] = sum(values) / len(parts)
            elif key == "ratio/min":
                combined[key] = min(stats[key] for stats, _ in parts if key in stats)
            elif key == "ratio/max":
                combined[key] = max(stats[key] for stats, _ in parts if key in stats)
            elif key == "grad_norm":
                combined[key] = values[0]
            else:
                combined[key] = sum(v * count for v, (_, count) in zip(values, parts)) / total
        return combined

    # --- evaluation ---------------------------------------------------------------------------

    def evaluation_prompts(self) -> list[str] | None:
        """The fixed prompts of periodic evaluation; None means the ToyShapes benchmark."""
        if self.config.eval_prompts:
            return [line.strip() for line in Path(self.config.eval_prompts).read_text().splitlines() if line.strip()]
        if self.prompts.toyshapes_split is not None and self.toy:
            return None
        return list(dict.fromkeys(self.prompts.pool))[:16]

    @contextlib.contextmanager
    def final_weights(self):
        """The weights to evaluate and export, whole on every process: EMA swapped in when enabled,
        and all-gathered when sharded. Every process must enter it together."""
        # Unsharded, only rank 0 uses them; sharded, every process holds a part of the EMA.
        swap = self.ema is not None and (self.sharded is not None or self.rank == 0)
        context = self.ema.swapped_in(self.params) if swap else contextlib.nullcontext()
        with context, unsharded(self.sharded):
            yield

    def evaluate_on_rank0(self) -> dict[str, float]:
        """evaluate() with the final weights; every process calls it, rank 0 evaluates ({} elsewhere)."""
        with self.final_weights():
            return self.evaluate() if self.rank == 0 else {}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic samples of fixed prompts and seeds with the current weights (see
        evaluate_on_rank0): the ToyShapes benchmark for the toy model on ToyShapes prompts, else
        the reward on the evaluation prompts. Writes a sample grid and a JSON report under out/samples."""
        from .images import save_grid

        start = time.perf_counter()
        samples = self.out / "samples"
        samples.mkdir(exist_ok=True)
        name = f"iter_{self.iteration:05d}"
        prompts = self.evaluation_prompts()
        if prompts is None:
            from flowrl.benchmarks.toyshapes.evaluate import evaluate_toyshapes

            report, images = evaluate_toyshapes(self.policy, self.config.eval_per_category, self.config.eval_steps, self.config.guidance, progress=False)
            report.save(samples / f"{name}.json")
            stats = {"eval/overall": report.overall, "eval/mean_score": report.mean_score, **{f"eval/{k}": v for k, v in report.accuracy.items()}}
            nrow = self.config.eval_per_category
        else:
            from .generate import generate

            seeds = list(range(len(prompts)))  # fixed: the same noise for a prompt at every evaluation
            shift = float(getattr(self.method_config, "shift", 1.0))
            images = generate(self.policy, prompts, seeds, steps=self.config.eval_steps, guidance=self.config.guidance, shift=shift, batch_size=self.config.max_batch)
            stats = {}
            records = [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)]
            pointwise = self.reward.pointwise_only()
            if pointwise is not None:  # pairwise judges need a group to compare within; evaluation has one image per prompt
                scores = pointwise.evaluate(images, prompts)
                for i, record in enumerate(records):
                    record.update(reward=float(scores.total[i]), **{k: float(v[i]) for k, v in scores.components.items()})
                stats = {"eval/reward": float(scores.total[scores.valid].mean()) if bool(scores.valid.any()) else float("nan")}
            (samples / f"{name}.json").write_text(json.dumps({"iteration": self.iteration, **stats, "records": records}, indent=2))
            nrow = min(8, len(prompts))
        save_grid(images, samples / f"{name}.png", nrow=nrow, scale=max(1, 128 // images.shape[-1]))
        stats["time/eval"] = time.perf_counter() - start
        return stats

    # --- the loop -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the run directory for another run (the end of `train` does it)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def report_update_failure(self, iteration: int, rng: dict, error: Exception) -> None:
        """An update that failed before its first optimizer step (most often out of memory in a
        backward pass) left the weights, optimizer and EMA as the last iteration left them: save
        that iteration. Later, the weights may be half-updated: only the last checkpoint is safe."""
        if not self.weights_touched:
            self.save_after_failure(f"the update of iteration {iteration} (before its first optimizer step)", rng)
        else:
            print(f"the update of iteration {iteration} failed after changing the weights; {self.where_a_rerun_resumes()}", file=sys.stderr)
        if isinstance(error, torch.OutOfMemoryError):
            print(f"out of memory in the update: a smaller micro_batch= than {self.config.micro_batch} (transitions per backward pass) "
                  "computes the same update (up to rounding) in less memory, and a rerun may change it", file=sys.stderr)

    def redo_failed_evaluation(self) -> None:
        """The resumed iteration's evaluation failed in the last run (its record was kept without it):
        evaluate now, with the random state it would have started from, and complete the record."""
        self.evaluation_due = False
        if not self.config.eval_every:
            return
        if self.rank == 0:
            print(f"evaluating iteration {self.iteration} again (its evaluation failed in the last run)", file=sys.stderr)
        stats = self.evaluate_on_rank0()
        if self.rank == 0:  # the trackers missed the whole record: the failure came before logging it
            record = complete_record(self.metrics_path, self.iteration, stats)
            self.accelerator.log({k: v for k, v in record.items() if k != "iteration"}, step=self.iteration)

    def start_over_unless_resumed(self, resumed: bool) -> None:
        """A run that does not resume starts with an empty run directory: an earlier run's
        metrics, checkpoint and evaluation samples there would mix with this one's."""
        if resumed or self.rank != 0:
            return
        removed = forget_earlier_run(self.out)
        if removed:
            why = "resume=false" if not self.config.resume else "no checkpoint to resume from"
            print(f"{why}: starting over in {self.out}; removed the earlier run's {', '.join(removed)}", file=sys.stderr)

    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, Any]:
        config = self.config
        resumed = self.try_resume()
        self.start_over_unless_resumed(resumed)
        started = time.perf_counter()
        fresh = self.gather(self.iteration == 0 and self.rank == 0 and not read_metrics(self.metrics_path))[0]
        if self.rank == 0 and self.iteration < config.iterations:
            where = f"from iteration {self.iteration} of {config.iterations}" if resumed else f"{config.iterations} iterations"
            first = "; evaluating the starting model first" if fresh and config.eval_every else ""
            print(f"training {config.method} on {config.policy}, {where}, into {self.out}{first} "
                  "(Ctrl-C stops after the current iteration, with a checkpoint)", file=sys.stderr)
        if fresh:
            record = {"iteration": 0, **(self.evaluate_on_rank0() if config.eval_every else {})}
            if self.rank == 0:
                append_metrics(self.metrics_path, record)
        if self.evaluation_due:
            self.redo_failed_evaluation()
        bar = tqdm(total=config.iterations, initial=self.iteration, desc="train", unit="it", disable=self.rank != 0)
        first_iteration = self.iteration
        last: dict[str, float] = {}
        stopped_early, stopped_by = False, None
        with StopRequests("iteration") as stop:  # Ctrl-C / SIGTERM: end after this iteration, with a checkpoint
            while self.iteration < config.iterations:
                iteration = self.iteration
                random_state = rng_state()
                try:
                    batch = self.collect(iteration)
                except Exception:  # rollout or reward: the weights are still those of the last iteration
                    self.save_after_failure(f"iteration {iteration + 1} (before its update)", random_state)
                    raise
                self.weights_touched = False
                try:
                    update_stats = self.update(batch, iteration)
                except Exception as error:
                    self.report_update_failure(iteration + 1, random_state, error)
                    raise
                record = {"iteration": iteration + 1, **batch.stats, **update_stats, **self.advance_old_sampler()}
                self.iteration = iteration + 1
                at_end = self.iteration == config.iterations
                out_of_time = config.minutes > 0 and time.perf_counter() - started > 60 * config.minutes
                flags = self.gather((out_of_time, stop.signal))  # every process stops at the same iteration
                out_of_time = any(late for late, _ in flags)
                stopped_by = next((number for _, number in flags if number is not None), None)
                # An interruption adds no evaluation (one is slow on a large model), so the records
                # of an interrupted and resumed run are those of an uninterrupted one.
                if config.eval_every and (self.iteration % config.eval_every == 0 or at_end or out_of_time):
                    before_evaluation = rng_state()
                    try:
                        record.update(self.evaluate_on_rank0())
                    except Exception:  # the iteration itself is done: keep it, without its evaluation
                        self.save_after_failure(f"the evaluation after iteration {self.iteration}", before_evaluation, record)
                        raise
                if self.rank == 0:
                    append_metrics(self.metrics_path, record)
                self.accelerator.log({k: v for k, v in record.items() if k != "iteration"}, step=self.iteration)
                if self.iteration % config.checkpoint_every == 0 or at_end or out_of_time or stopped_by is not None:
                    self.save()
                last = record
                evaluation = {"eval": f"{record[k]:.3f}" for k in ("eval/overall", "eval/reward") if k in record}
                bar.set_postfix(reward=f"{record['reward/mean']:.3f}", **evaluation)
                bar.update(1)
                if (out_of_time or stopped_by is not None) and not at_end:
                    stopped_early = True
                    break
            if not stopped_early:
                stopped_by = None  # a signal during the last iteration: the run finished anyway
        bar.close()
        if self.rank == 0:
            records = read_metrics(self.metrics_path)
            eval_key = "eval/overall" if any("eval/overall" in r for r in records) else "eval/reward"
            draw_curve(records, self.out / "reward_curve.png", eval_key=eval_key)
            if not last:  # nothing left to train: report the run's last evaluation
                last = next((r for r in reversed(records) if eval_key in r), {})
        self.export()  # before end_training, which may take down the process group a sharded export needs
        # Every process takes the group down together: one leaving while a peer still worked on
        # the export's collectives aborted now and then ("terminate called without an active exception").
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return {"iterations": self.iteration, "trained_now": self.iteration - first_iteration, "resumed": resumed,
                "stopped_early": stopped_early, "stopped_by": stopped_by, "last": last, "rank": self.rank}

    def export(self) -> Path:
        """The trained weights (EMA when enabled) in out/final: for the toy model a loadable model
        directory with LoRA merged; for SD3/FLUX the LoRA adapter in diffusers' format
        (pipeline.load_lora_weights) or, for full fine-tuning, the transformer folder. Every process
        calls it (a sharded model is gathered); rank 0 writes."""
        directory = self.out / "final"
        with self.final_weights():
            if self.rank != 0:
                return directory
            # A sharded transformer is exported from a plain copy of its gathered weights.
            transformer = plain_replica(self.policy.transformer) if self.sharded is not None else self.policy.transformer
            if not self.toy:
                return export_transformer(transformer, self.lora, directory, self.policy.pipeline_class)
            from .policies import save_toy
            from .policies.toy import ToyModel

            model = self.policy.model
            if self.lora or self.sharded is not None:
                import copy

                if self.sharded is None:  # merge into a copy, not the live transformer (a sharded run's replica is one already)
                    transformer = copy.deepcopy(transformer)
                if self.lora:
                    _merge_peft(transformer)
                with torch.device("meta"):  # a shell for the two modules, no random init
                    merged = ToyModel(model.config)
                merged.text_encoder, merged.transformer = model.text_encoder, transformer
                model = merged
            save_toy(model, directory, dtype=torch.float32)
        return directory


def _merge_peft(module: torch.nn.Module) -> None:
    """Fold every peft LoRA layer into its base layer in place, leaving plain nn.Linear modules."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], child.get_base_layer())


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured; returns a summary."""
    return Trainer(config).train()
