"""Sigma grids for rectified-flow models: diffusers' flow-matching scheduler (Flow-GRPO) and the
time-shifted uniform grid of DanceGRPO's code (MixGRPO, BranchGRPO and G2RPO use it too).

sigma runs from 1 (pure noise) to 0 (data): x_sigma = (1 - sigma) * x0 + sigma * noise.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The num_steps + 1 sigmas (ending at 0) that SD3/FLUX sample on, with timestep shift.

    shift > 1 spends more steps at high noise (SD3 uses 3.0); shift = 1 is a plain linear grid.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(int(num_steps))
    return scheduler.sigmas.to(torch.float32).clone()


def time_shift_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The num_steps + 1 sigmas shift t / (1 + (shift - 1) t) of t = linspace(1, 0, num_steps + 1)
    (SD3's time shift of a uniform grid): its last non-zero sigma is larger than the scheduler's."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    t = torch.linspace(1, 0, int(num_steps) + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).to(torch.float32)


GRIDS = {"scheduler": flow_sigmas, "time_shift": time_shift_sigmas}
