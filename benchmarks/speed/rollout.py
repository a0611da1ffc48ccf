"""Rollout cost of the methods on the toy model: NFE, wall time and time per scored sample.

    python -m flowrl.benchmarks.speed.rollout [--prompts 2] [--repeats 2] [--threads 2]

Every method runs in this one process on the same model and prompts, so the ratios between rows
are meaningful on any machine; the absolute times are this machine's. It also compares one
batched model call per grid index with chunked calls (max_batch), the executor's design choice,
and measures what computing a share_noise group's common first state once saves: the toy
default's plan with and without shared starting noise (without it no two rows are equal), for
the rollout and for re-scoring its trained transitions with a backward pass, as the update does.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from flowrl.cli_args import resolve_recipe
from flowrl.config import load_config, method_config
from flowrl.policies import load_toy
from flowrl.policies.base import rollout_velocity
from flowrl.prompt_source import PromptSource
from flowrl.samplers.methods import get_method
from flowrl.samplers.rollout import rollout, score_transitions

# Each method at toy scale with 16 scored samples per prompt where the method allows it.
SETTINGS = {
    "flow_grpo": dict(num_steps=10, shift=1.0, group_size=16),
    "mix_grpo": dict(num_steps=10, shift=1.0, group_size=16, window=3),
    "mix_grpo_flash": dict(num_steps=10, shift=1.0, group_size=16, window=3),
    "branch_grpo": dict(num_steps=10, shift=1.0, group_size=1, split_steps=(0, 2, 4, 6)),
    "branch_grpo_mix": dict(num_steps=10, shift=1.0, group_size=1, split_steps=(0, 2, 4, 6), mix_window=(0, 3)),
    "tree_rpo": dict(num_steps=10, shift=1.0, group_size=1, window=4),
    "tempflow_grpo": dict(num_steps=10, shift=1.0, group_size=1, probes=4, probe_steps=(0, 1, 2, 3)),
    "g2rpo": dict(num_steps=10, shift=1.0, group_size=1, sde_steps=(0, 1), probes=4, tail_strides=(1, 2)),
}


def time_rollout(policy, name: str, prompts: list[str], repeats: int, max_batch: int = 256) -> dict:
    method = get_method(name)
    config = method.configure(**SETTINGS[name])
    plan = method.plan(config)
    cond = policy.encode(prompts)
    velocity = rollout_velocity(policy, cond, 4.0)
    best = float("inf")
    with torch.no_grad():
        for r in range(repeats):
            start = time.perf_counter()
            result = rollout(velocity, plan, len(prompts), policy.sample_shape, seed=r, max_batch=max_batch)
            best = min(best, time.perf_counter() - start)
    scored = int(result.reward_mask.sum())
    trained = int(result.transitions.trained.sum())
    return {
        "method": name,
        "nfe": result.nfe,
        "scored": scored,
        "trained": trained,
        "seconds": best,
        "nfe_per_sample": result.nfe / scored,
        "seconds_per_sample": best / scored,
    }


def toy_default_plan_and_prompts():
    """The toy recipe's plan and prompts at its first iteration, as the trainer draws them."""
    config = load_config(resolve_recipe("toy"))
    plan = get_method(config.method).plan(method_config(config), 0)
    return plan, PromptSource(config.prompts, config.seed).batch(0, config.prompts_per_iteration)


def shared_start_seconds(policy, plan, prompts: list[str], repeats: int, share_noise: bool) -> tuple[float, float]:
    """Best rollout time and best time to re-score its trained transitions (forward and backward)
    for `plan` (the toy default's) with or without shared starting noise."""
    plan = dataclasses.replace(plan, share_noise=share_noise)
    cond = policy.encode(prompts)
    velocity = rollout_velocity(policy, cond, 4.0)
    params = list(policy.transformer.requires_grad_(True).parameters())
    rollout_best = score_best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            result = rollout(velocity, plan, len(prompts), policy.sample_shape, seed=r)
        rollout_best = min(rollout_best, time.perf_counter() - start)
        start = time.perf_counter()
        score_transitions(velocity, result.trained).logp.sum().backward()
        score_best = min(score_best, time.perf_counter() - start)
        for p in params:
            p.grad = None
    return rollout_best, score_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_toy()
    prompts = ["a circle left of a square", "three green triangles", "a yellow square", "two circles"][: args.prompts]
    rows = [time_rollout(policy, name, prompts, args.repeats) for name in SETTINGS]
    base = rows[0]["seconds_per_sample"]
    print(
        f"{'method':<16}{'NFE':>7}{'scored':>8}{'trained':>9}{'NFE/sample':>12}{'s':>8}{'s/sample':>10}{'vs flow_grpo':>14}"
    )
    for row in rows:
        print(
            f"{row['method']:<16}{row['nfe']:>7}{row['scored']:>8}{row['trained']:>9}{row['nfe_per_sample']:>12.2f}{row['seconds']:>8.2f}{row['seconds_per_sample']:>10.3f}{row['seconds_per_sample'] / base:>13.2f}x"
        )
    chunked = time_rollout(policy, "flow_grpo", prompts, args.repeats, max_batch=8)
    print(
        f"\nflow_grpo with max_batch=8 (chunked calls) vs one call per grid index: {chunked['seconds'] / rows[0]['seconds']:.2f}x the time"
    )
    plan, default_batch = toy_default_plan_and_prompts()
    shared = shared_start_seconds(policy, plan, default_batch, args.repeats, share_noise=True)
    distinct = shared_start_seconds(policy, plan, default_batch, args.repeats, share_noise=False)
    print(
        f"toy default's plan and batch ({len(default_batch)} prompts x {plan.group_size}), shared starting noise "
        "(first state computed once per prompt) vs none: rollout "
        f"{shared[0] / distinct[0]:.2f}x the time, re-scoring with backward {shared[1] / distinct[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
