"""Deterministic (ODE) steps of a flow-matching velocity field: Euler, Heun, DPM-Solver++ (2M).

Convention: sigma runs from 1 (noise) to 0 (data), x_sigma = (1 - sigma) x0 + sigma noise, and the
velocity is dx/dsigma = noise - x0. A step goes from sigma to sigma_next < sigma. Sigmas may be
Python floats or per-sample tensors of shape [B], so one call can advance samples to different
grid points (coarse ODE tails beside fine ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

# velocity(x, sigma) -> dx/dsigma, with sigma a tensor of shape [B].
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ODE_SOLVERS = ("euler", "heun", "dpmpp_2m")
EVALS_PER_STEP = {"euler": 1, "heun": 2, "dpmpp_2m": 1}


def per_sample(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] tensor as a tensor broadcastable against x [B, ...]."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if value.ndim == 0:
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(f"per-sample values must have shape [{x.shape[0]}], got {tuple(value.shape)}")
    return value.view(-1, *([1] * (x.ndim - 1)))


def check_solver(name: str) -> str:
    """The solver name, or a ValueError listing the known ones."""
    if name not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {name!r}; expected one of {list(ODE_SOLVERS)}")
    return name


def euler_step(
    velocity: torch.Tensor, x: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """One explicit Euler step of dx/dsigma = velocity from sigma to sigma_next."""
    return x + (per_sample(sigma_next, x) - per_sample(sigma, x)) * velocity


def heun_step(
    velocity: torch.Tensor, velocity_at_prediction: torch.Tensor, x: torch.Tensor, sigma, sigma_next
) -> torch.Tensor:
    """Heun's trapezoidal correction: the mean of the velocity at x and at the Euler prediction.

    velocity_at_prediction is v(euler_step(velocity, x, sigma, sigma_next), sigma_next).
    """
    return x + (per_sample(sigma_next, x) - per_sample(sigma, x)) * 0.5 * (velocity + velocity_at_prediction)


@dataclass
class DpmHistory:
    """What DPM-Solver++ (2M) carries between steps: the previous data prediction and its sigma."""

    x0: torch.Tensor  # [B, ...]
    sigma: torch.Tensor  # [B]


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    # lambda = log(alpha / sigma) with alpha = 1 - sigma for rectified flow
    sigma = sigma.clamp(1e-12, 1 - 1e-12)
    return torch.log1p(-sigma) - torch.log(sigma)


def dpmpp_2m_step(
    velocity: torch.Tensor, x: torch.Tensor, sigma, sigma_next, history: DpmHistory | None = None
) -> tuple[torch.Tensor, DpmHistory]:
    """One DPM-Solver++ (2M) step in data prediction (Lu et al. 2022, arXiv 2211.01095, Alg. 2).

    With alpha = 1 - sigma the first-order update is exactly Euler's; the second-order term uses the
    previous data prediction. It falls back to first order where the log-SNR step is infinite: on
    the first step (no history or sigma = 1) and on the last step (sigma_next = 0).
    """
    s, s_next = per_sample(sigma, x), per_sample(sigma_next, x)
    x0 = x - s * velocity
    data = x0
    if history is not None:
        prev = per_sample(history.sigma.to(x), x)
        finite = (s_next > 0) & (prev < 1) & (s < 1)
        h = _log_snr(s_next) - _log_snr(s)
        h_prev = _log_snr(s) - _log_snr(prev)
        # D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} with r = h_prev / h
        coefficient = torch.where(finite, h / (2 * h_prev.clamp_min(1e-12)), torch.zeros_like(h))
        data = x0 + coefficient * (x0 - history.x0)
    # x_next = (sigma_next / sigma) x + alpha_next (1 - e^{-h}) D, and alpha_next (1 - e^{-h}) = (sigma - sigma_next) / sigma
    x_next = (s_next / s) * x + ((s - s_next) / s) * data
    sigma_vec = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).clone()
    return x_next, DpmHistory(x0, sigma_vec)


@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, solver: str = "euler", progress: bool = False
) -> torch.Tensor:
    """Integrate from noise at sigmas[0] to sigmas[-1] with a fixed-step solver; returns the final x."""
    check_solver(solver)
    x, history = noise, None
    for i in tqdm(range(len(sigmas) - 1), desc=f"sampling ({solver})", disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i].to(x), sigmas[i + 1].to(x)
        v = velocity_fn(x, sigma.expand(x.shape[0]))
        if solver == "euler":
            x = euler_step(v, x, sigma, sigma_next)
        elif solver == "heun":
            prediction = euler_step(v, x, sigma, sigma_next)
            x = heun_step(v, velocity_fn(prediction, sigma_next.expand(x.shape[0])), x, sigma, sigma_next)
        else:
            x, history = dpmpp_2m_step(v, x, sigma, sigma_next, history)
    return x


def sample_euler(
    velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, progress: bool = False
) -> torch.Tensor:
    """Integrate from noise at sigmas[0] to sigmas[-1] with Euler steps; returns the final x."""
    return sample_ode(velocity_fn, noise, sigmas, "euler", progress)


@torch.no_grad()
def sample_adaptive(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigma_start: float = 1.0,
    sigma_end: float = 0.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> torch.Tensor:
    """Reference-quality solve with torchdiffeq's adaptive odeint (evaluation, tests)."""
    from torchdiffeq import odeint

    def func(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return velocity_fn(x, sigma.to(x).expand(x.shape[0]))

    times = torch.tensor([sigma_start, sigma_end], dtype=noise.dtype, device=noise.device)
    return odeint(func, noise, times, method=method, rtol=rtol, atol=atol)[-1]
