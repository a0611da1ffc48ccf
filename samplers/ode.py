"""Deterministic (ODE) sampling of a velocity field over a sigma grid."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

# velocity(x, sigma) -> dx/dsigma, with sigma a tensor of shape [B].
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_step(velocity: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One explicit Euler step of dx/dsigma = velocity from sigma to sigma_next."""
    return x + (sigma_next - sigma) * velocity


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Integrate from noise at sigmas[0] to sigmas[-1] with Euler steps; returns the final x."""
    x = noise
    steps = range(len(sigmas) - 1)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        sigma = sigmas[i].expand(x.shape[0]).to(x)
        x = euler_step(velocity_fn(x, sigma), x, float(sigmas[i]), float(sigmas[i + 1]))
    return x
