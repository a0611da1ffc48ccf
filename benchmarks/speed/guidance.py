"""The cost of a guided velocity as two calls (`sd3_velocity`) against one batched call.

    python -m flowrl.benchmarks.speed.guidance [--batch 48] [--repeats 3] [--threads 2]

Times, in this one process and interleaved, the shipped toy model's guided velocity at one noise
level: sampling (no grad) and a training pass (forward plus backward of a scalar loss). The
batched form stacks the prompt and unconditional halves into one call of twice the batch; the
two-call form (the trainer's) runs them separately. Both give the exact gradient. A third form
prices that exactness: two calls with the unconditional one run without a graph, the trainer's
form before 2026-12-04, whose gradient is not the derivative of the guided velocity.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowrl.policies.base import TextConditioning
from flowrl.policies.sd3_velocity import sd3_velocity, transformer_velocity

GUIDANCE = 4.0


def batched_velocity(transformer, x, sigma, cond: TextConditioning, guidance: float) -> torch.Tensor:
    """The one-call reference form: both halves in one batch of twice the size (Flow-GRPO's)."""
    null_embeds, null_pooled = cond.null_embeds.expand_as(cond.prompt_embeds), cond.null_pooled.expand_as(cond.pooled)
    out = transformer_velocity(
        transformer,
        torch.cat([x, x]),
        torch.cat([sigma, sigma]),
        torch.cat([cond.prompt_embeds, null_embeds]),
        torch.cat([cond.pooled, null_pooled]),
    )
    v_prompt, v_null = out.chunk(2)
    return v_null + guidance * (v_prompt - v_null)


def prompt_branch_velocity(transformer, x, sigma, cond: TextConditioning, guidance: float) -> torch.Tensor:
    """Two calls, the unconditional one without a graph: cheaper to train, but a biased gradient."""
    null_embeds, null_pooled = cond.null_embeds.expand_as(cond.prompt_embeds), cond.null_pooled.expand_as(cond.pooled)
    with torch.no_grad():
        v_null = transformer_velocity(transformer, x, sigma, null_embeds, null_pooled)
    v_prompt = transformer_velocity(transformer, x, sigma, cond.prompt_embeds, cond.pooled)
    return v_null + guidance * (v_prompt - v_null)


def interleaved_seconds(calls: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each named call, after one warm-up each; the calls alternate so that
    drift in the machine's load hits all of them alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batch", type=int, default=48, help="samples per call (the toy default's rollout: 12 prompts x 4)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per form and mode")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: need at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from flowrl.benchmarks.toyshapes.prompts import sample_prompts
    from flowrl.policies.toy import load_toy

    policy = load_toy()
    transformer = policy.transformer
    texts = [p.text for p in sample_prompts(args.batch, seed=0)]
    cond = policy.encode(texts)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *policy.sample_shape, generator=generator)
    sigma = torch.full((args.batch,), 0.9)

    def sample(form):
        with torch.no_grad():
            form(transformer, x, sigma, cond, GUIDANCE)

    def train_pass(form):
        transformer.zero_grad(set_to_none=True)
        form(transformer, x, sigma, cond, GUIDANCE).square().mean().backward()

    for p in transformer.parameters():
        p.requires_grad_(True)
    forms = {
        "one batched call": batched_velocity,
        "two calls": sd3_velocity,
        "two calls, no graph for v_null": prompt_branch_velocity,
    }
    print(f"| mode | {' (s) | '.join(forms)} (s) | two calls / batched | no-graph form / two calls |")
    print("|---|---|---|---|---|---|")
    for mode, run in (("sampling", sample), ("training pass", train_pass)):
        median = interleaved_seconds(
            {name: (lambda form=form: run(form)) for name, form in forms.items()}, args.repeats
        )
        a, b, c = (median[name] for name in forms)
        print(f"| {mode} | {a:.3f} | {b:.3f} | {c:.3f} | {b / a:.2f}x | {c / b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
