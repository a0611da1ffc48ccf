"""Draw images from a flow policy with the deterministic sampler, one seed per image."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from samplers import flow_sigmas, sample_euler
from samplers.shard import seeded_noise

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
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for B (prompt, seed) pairs, in batches of `batch_size`."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sigmas = flow_sigmas(steps, shift).to(policy.device)
    chunks = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(chunks) * steps, desc=f"sampling {len(prompts)} images", unit="step", disable=not progress)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        bar.update(1)
        return policy.velocity(x, sigma, cond, guidance)

    out = []
    for start in chunks:
        cond = policy.encode(prompts[start : start + batch_size])
        noise = seeded_noise(seeds[start : start + batch_size], policy.sample_shape).to(policy.device)  # image i depends on seeds[i] only
        out.append(policy.decode(sample_euler(velocity, noise, sigmas)).cpu())
    bar.close()
    return torch.cat(out)
