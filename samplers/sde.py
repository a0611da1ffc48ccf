"""Stochastic (SDE) steps of a flow-matching model with exact Gaussian log-probabilities.

Both published forms are the reverse-time SDE whose marginals match the probability-flow ODE,
    dx = [v + g(sigma)^2 / (2 sigma) * (x + (1 - sigma) v)] dsigma + g(sigma) dW,
(the drift term is -g^2/2 times the score, and the score of x_sigma is -(x + (1 - sigma) v) / sigma),
discretised with Euler-Maruyama. They differ in the diffusion g:
  - flow_grpo (Liu et al., arXiv 2505.05470, eq. 9): g = a * sqrt(sigma / (1 - sigma)), a = 0.7;
  - dance_grpo (Xue et al., arXiv 2505.07818): g = eta, a constant, eta = 0.3.
A transition is Gaussian with mean  x + [v + g^2/(2 sigma) (x + (1 - sigma) v)] d  and std
g * sqrt(-d), d = sigma_next - sigma < 0.
The third form, cps (coefficients-preserving sampling, arXiv 2509.05952; Flow-GRPO's
sde_type="cps"), is DDIM-like: with x0_hat = x - sigma v and eps_hat = x + (1 - sigma) v, the next
sample is (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) eps_hat + std z, std = sigma_next
sin(eta pi / 2), eta = 0.8: the noise in it has exactly the level sigma_next. A log-probability is
averaged over the sample's dimensions, as the papers' code does, so it does not scale with
resolution; for cps it is the exact Gaussian density (Flow-GRPO's code keeps only -(x - mean)^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ode import per_sample

SDE_FORMS = ("flow_grpo", "dance_grpo", "cps")
DEFAULT_NOISE_LEVEL = {"flow_grpo": 0.7, "dance_grpo": 0.3, "cps": 0.8}


@dataclass
class SdeStep:
    """One SDE transition: the next sample, its log-probability [B], the Gaussian's mean and std [B]."""

    sample: torch.Tensor
    logp: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def check_form(form: str) -> str:
    """The SDE form, or a ValueError listing the known ones."""
    if form not in SDE_FORMS:
        raise ValueError(f"unknown SDE form {form!r}; expected one of {list(SDE_FORMS)}")
    return form


def diffusion(form: str, sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
    """g(sigma) of the given form; tensors broadcast against each other."""
    check_form(form)
    if form == "dance_grpo":
        return noise_level * torch.ones_like(sigma)
    # At sigma = 1 the flow_grpo diffusion is infinite; like the reference code, take the
    # denominator at the next grid point for that first step so the step stays finite.
    denominator_sigma = torch.where(sigma >= 1, sigma_next, sigma)
    return noise_level * torch.sqrt(sigma / (1 - denominator_sigma))


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) averaged over all but the batch dimension; std is [B] or scalar.

    NaN where std is 0: a deterministic step (noise level 0) has no density to train on.
    """
    std = per_sample(std, x)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    elementwise = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - 0.5 * math.log(2 * math.pi)
    return torch.where(std.flatten() > 0, elementwise.flatten(1).mean(1), torch.nan)


def sde_mean_std(
    velocity: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    form: str = "flow_grpo",
    noise_level: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [B, ...] and std [B] of the Gaussian transition from x at sigma to sigma_next."""
    noise_level = DEFAULT_NOISE_LEVEL[check_form(form)] if noise_level is None else noise_level
    batch = x.shape[0]
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(batch)
    s_next = torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device).expand(batch)
    level = torch.as_tensor(noise_level, dtype=x.dtype, device=x.device).expand(batch)
    if torch.any(s_next >= s) or torch.any(s > 1) or torch.any(s_next < 0):
        raise ValueError(f"an SDE step needs 1 >= sigma > sigma_next >= 0, got sigma={sigma} sigma_next={sigma_next}")
    if torch.any(level < 0) or not bool(torch.isfinite(level).all()):
        raise ValueError(
            f"the noise level of an SDE step must be finite and >= 0 (0 is the ODE step), got {noise_level}"
        )
    if form == "cps":
        return cps_mean_std(velocity, x, s, s_next, level)
    g = diffusion(form, s, s_next, level)  # [B]
    d = s_next - s  # [B], negative
    gv, dv, sv = per_sample(g, x), per_sample(d, x), per_sample(s, x)
    mean = x + (velocity + gv**2 / (2 * sv) * (x + (1 - sv) * velocity)) * dv
    return mean, g * torch.sqrt(-d)


def cps_mean_std(
    velocity: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, eta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPS's transition: mean [B, ...] and std [B] (sigma_next sin(eta pi / 2)), from the model's
    clean and noise estimates; eta = 1 draws the whole next noise afresh, eta = 0 is DDIM."""
    if bool((eta > 1).any()):
        raise ValueError(f"the cps noise level is eta in sin(eta pi / 2), at most 1; got {eta.max().item()}")
    std = sigma_next * torch.sin(eta * math.pi / 2)  # [B]
    sv, snv, stdv = per_sample(sigma, x), per_sample(sigma_next, x), per_sample(std, x)
    clean = x - sv * velocity
    noise = x + (1 - sv) * velocity
    return (1 - snv) * clean + torch.sqrt((snv**2 - stdv**2).clamp_min(0)) * noise, std


def sde_step(
    velocity: torch.Tensor,
    x: torch.Tensor,
    sigma,
    sigma_next,
    form: str = "flow_grpo",
    noise_level: float | torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    x_next: torch.Tensor | None = None,
) -> SdeStep:
    """Take one SDE step, or with x_next given, score that stored transition under this velocity.

    The next sample is mean + std * noise, with noise given or drawn from generator. Computed in
    float32 even for bf16 models: g^2 / (2 sigma) times x overflows bf16's precision near sigma = 1.
    """
    dtype = x.dtype
    velocity32, x32 = velocity.float(), x.float()
    mean, std = sde_mean_std(velocity32, x32, sigma, sigma_next, form, noise_level)
    if x_next is None:
        if noise is None:
            noise = torch.randn(
                x.shape, generator=generator, device=generator.device if generator is not None else x.device
            )
        x_next = mean + per_sample(std, mean) * noise.to(mean)
    x_next = x_next.to(dtype)  # score exactly the sample that is stored and returned
    logp = gaussian_logprob(x_next.float(), mean, std)
    return SdeStep(x_next, logp, mean, std)
