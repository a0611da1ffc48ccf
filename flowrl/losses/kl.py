"""KL penalties to the reference policy, per element.

k1, k2, k3 are Schulman's estimators of KL(pi || pi_ref) from samples of pi, written in the
log-probabilities of the sampled element: k1 = log r, k2 = (log r)^2 / 2, k3 = (1/r) - 1 + log r
with r = pi / pi_ref (k3 is unbiased and never negative). For Gaussian SDE steps of equal std the
KL between the two transitions is exact: ||mu - mu_ref||^2 / (2 std^2) (`gaussian_kl`).
Flow-GRPO's training code divides by 2 g^2 instead, g the diffusion coefficient of the step
(std = g sqrt(|dt|)): the exact KL times |dt| (`flow_grpo_kl`); its recipes' betas assume that.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-element estimate of KL(pi || pi_ref) from log pi and log pi_ref of sampled elements."""
    log_ratio = logp - logp_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; known: {KL_ESTIMATORS}")


KL_FORMS = ("flow_grpo", "exact")


def flow_grpo_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """[B] Flow-GRPO's KL term: the squared mean difference over 2 g^2, g = std / sqrt(|dt|) the
    step's diffusion coefficient, averaged over the non-batch dims (= gaussian_kl times |dt|)."""
    dt = torch.as_tensor(dt, dtype=mean.dtype, device=mean.device).abs()
    if bool((dt <= 0).any()):
        raise ValueError("the step size |dt| must be positive for Flow-GRPO's KL")
    return gaussian_kl(mean, mean_ref, std) * dt


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B] KL between N(mean, std^2 I) and N(mean_ref, std^2 I) per batch row, averaged over the
    other dims (the same per-dimension convention as the SDE log-probs). Flow-GRPO's KL term."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if bool((std <= 0).any()):
        raise ValueError("the transition std must be positive for the Gaussian KL")
    while std.ndim < mean.ndim:
        std = std.unsqueeze(-1)
    per_dim = (mean - mean_ref) ** 2 / (2 * std**2)
    return per_dim.flatten(1).mean(dim=1)
