"""Flow-matching points from a rollout, for Advantage Weighted Matching (AWM, arXiv 2509.25050).

AWM trains on the pretraining loss instead of the SDE transitions' Gaussian log-probs: each final
sample x0 is noised afresh to x_t = (1 - t) x0 + t eps at a trained step's noise level t, and the
velocity's squared error to the flow-matching target eps - x0 stands in for the log-likelihood.
The sampler's own noise then no longer enters the gradient, which is what lowers its variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rollout import Rollout, RolloutVelocity, Transitions, _chunked_velocity


@dataclass
class MatchingPoints:
    """M flow-matching points: clean sample x0 [M, ...], fresh noise [M, ...], noise level sigma
    [M] (a trained step's), prompt index [M]."""

    x0: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor
    prompt: torch.Tensor

    def __len__(self) -> int:
        return self.sigma.shape[0]

    def select(self, index: torch.Tensor) -> MatchingPoints:
        return MatchingPoints(self.x0[index], self.noise[index], self.sigma[index], self.prompt[index])


@dataclass
class MatchingScore:
    """logp [M]: minus the mean squared flow-matching error (AWM's log-likelihood proxy);
    velocity [M, ...]: the prediction, for a KL to the reference in velocity space."""

    logp: torch.Tensor
    velocity: torch.Tensor


def transition_samples(rollout: Rollout, transitions: Transitions) -> torch.Tensor:
    """[M] the index of the final sample each transition leads to. Only chains have one: a
    transition inside a tree or before a probe leads to several samples, so those fail."""
    roots = rollout.root
    if len(torch.unique(roots)) != len(roots) or bool((rollout.probe >= 0).any()):
        raise ValueError(
            f"objective=matching needs one final sample per chain, but method {rollout.plan.method!r} branches "
            "(trees or probes); use a chain method: flow_grpo, dance_grpo, mix_grpo or mix_grpo_flash"
        )
    sample_of_root = torch.full((int(roots.max()) + 1,), -1, dtype=torch.long, device=roots.device)
    sample_of_root[roots] = torch.arange(len(roots), device=roots.device)
    return sample_of_root[rollout.node_root[transitions.child.to(rollout.node_root.device)].to(roots.device)]


def matching_points(rollout: Rollout, transitions: Transitions, noise: torch.Tensor) -> MatchingPoints:
    """One point per transition: its chain's final sample, noised with `noise` [M, ...] at the
    transition's starting noise level (AWM's discrete time grid: the sampler's trained steps)."""
    samples = transition_samples(rollout, transitions)
    x0 = rollout.samples[samples.to(rollout.samples.device)]
    return MatchingPoints(x0, noise.to(x0), transitions.sigma.to(x0.device), transitions.prompt)


def score_matching(velocity: RolloutVelocity, points: MatchingPoints, max_batch: int = 256) -> MatchingScore:
    """Velocity at the noised points (with grad if enabled) and AWM's logp = -mean((v - (eps - x0))^2)."""
    sigma = points.sigma.view(-1, *[1] * (points.x0.ndim - 1))
    x_t = (1 - sigma) * points.x0 + sigma * points.noise
    v = _chunked_velocity(velocity, x_t, points.sigma, points.prompt, max_batch)
    error = v.float() - (points.noise - points.x0).float()  # float32: the mean of squares is the signal
    return MatchingScore(-error.pow(2).flatten(1).mean(1), v)
