"""Draw images from a flow policy, one seed per image: the deterministic Euler sampler, or with
eta > 0 the SDE that DanceGRPO-style rollouts use (to tell a sampler-specific RL gain from one
that holds for the deterministic sampler)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from flowrl.samplers import sample_euler
from flowrl.samplers.grid import GRIDS
from flowrl.samplers.plan import Plan, StepSpec
from flowrl.samplers.rollout import RolloutVelocity, rollout
from flowrl.samplers.shard import seeded_noise

from .policies.base import FlowPolicy


@torch.no_grad()
def generate(
    policy: FlowPolicy,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance: float = 4.0,
    shift: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
    eta: float = 0.0,
    grid: str = "scheduler",
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for B (prompt, seed) pairs, in batches of `batch_size`.

    eta > 0 samples every step with the dance_grpo SDE at noise level eta (the toy default
    trains with 0.3); its step noise, like the initial noise, depends on each image's seed only.
    grid: the sigmas (samplers.grid.GRIDS): the scheduler's, or time_shift (FLUX's pipeline grid).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    _check_settings(batch_size, eta)
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
    sigmas = GRIDS[grid](steps, shift).to(policy.device)
    chunks = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(chunks) * steps, desc=f"sampling {len(prompts)} images", unit="step", disable=not progress)

    def velocity(x: torch.Tensor, sigma: torch.Tensor, prompt_index: torch.Tensor | None = None) -> torch.Tensor:
        """The chunk's guided velocity (ODE solvers call it with x, sigma; the rollout also passes
        the rows' prompt indices), counted on the progress bar."""
        bar.update(1)
        return policy.velocity(x, sigma, cond if prompt_index is None else cond.select(prompt_index), guidance)

    out = []
    for start in chunks:
        cond = policy.encode(prompts[start : start + batch_size])
        chunk_seeds = seeds[start : start + batch_size]
        if eta == 0:
            noise = seeded_noise(chunk_seeds, policy.sample_shape).to(policy.device)  # image i depends on seeds[i] only
            x = sample_euler(velocity, noise, sigmas)
        else:
            x = _sde_samples(policy, velocity, sigmas, eta, chunk_seeds)
        out.append(policy.decode(x).cpu())
    bar.close()
    return torch.cat(out)


def sampler(
    policy: FlowPolicy,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    shift: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
) -> Callable[[list[str], list[int]], torch.Tensor]:
    """`generate` with the policy and settings bound: sample(prompts, seeds) -> images [B, 3, H, W]
    in [0, 1], the sampling callable that evaluations take (benchmarks/toyshapes/evaluate.py).
    Bad settings fail here, before any image is drawn."""
    _check_settings(batch_size, eta)

    def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate(
            policy,
            prompts,
            seeds,
            steps=steps,
            guidance=guidance,
            shift=shift,
            batch_size=batch_size,
            progress=progress,
            eta=eta,
        )

    return sample


def _check_settings(batch_size: int, eta: float) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta (the SDE noise level) must be finite and >= 0 (0: deterministic Euler), got {eta}")


def _sde_samples(
    policy: FlowPolicy, velocity: RolloutVelocity, sigmas: torch.Tensor, eta: float, seeds: list[int]
) -> torch.Tensor:
    """The final states of the solver layer's rollout of one chain per image with dance_grpo SDE
    steps at noise level eta; image i's noise (initial, then per step) comes from seed i alone."""
    steps = tuple(StepSpec("sde", sde="dance_grpo", noise_level=eta) for _ in range(len(sigmas) - 1))
    result = rollout(
        velocity,
        Plan(sigmas.cpu(), steps, method="generate"),
        len(seeds),
        policy.sample_shape,
        device=policy.device,
        max_batch=len(seeds),
        root_seeds=list(seeds),
    )
    return result.samples[torch.argsort(result.root.to(result.samples.device))]
