"""Exactness on a 2-D Gaussian mixture, whose rectified-flow velocity is known in closed form.

With x_s = (1 - s) x0 + s eps (s = sigma, eps ~ N(0, I)) and data a mixture of N(mu_k, diag(c_k^2)),
x_s given component k is N((1 - s) mu_k, (1 - s)^2 c_k^2 + s^2) per dimension, and by Gaussian
conditioning  E[x0 | x, k] = mu_k + (1 - s) c_k^2 / C_k (x - (1 - s) mu_k),  E[eps | x, k] = s / C_k (x - (1 - s) mu_k)
with C_k = (1 - s)^2 c_k^2 + s^2. The velocity E[eps - x0 | x] mixes these with the posterior
responsibilities. Both the probability-flow ODE and the flow_grpo SDE driven by it must carry N(0, I)
at sigma = 1 to the mixture at sigma = 0 (and to the closed-form mixture at every sigma between).
"""

import math

import pytest
import torch

from flowrl.samplers.ode import sample_adaptive, sample_ode
from flowrl.samplers.sde import sde_step

WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], dtype=torch.float64)
STDS = torch.tensor([[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], dtype=torch.float64)
N = 20_000


def marginal(s):
    """Component weights, means [K, 2] and stds [K, 2] of x_s (a Gaussian mixture for every s)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return WEIGHTS, (1 - s) * MEANS, torch.sqrt((1 - s) ** 2 * STDS**2 + s**2)


def velocity(x, sigma):
    """Exact E[eps - x0 | x_sigma = x]; x [B, 2], sigma [B]."""
    s = sigma.to(x).view(-1, 1, 1)  # [B, 1, 1] against components [K, 2]
    var = (1 - s) ** 2 * STDS.to(x) ** 2 + s**2  # [B, K, 2]
    centred = x.unsqueeze(1) - (1 - s) * MEANS.to(x)  # [B, K, 2]
    log_density = -0.5 * (centred**2 / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(WEIGHTS.to(x))
    resp = torch.softmax(log_density, dim=1).unsqueeze(-1)  # [B, K, 1]
    e_x0 = MEANS.to(x) + (1 - s) * STDS.to(x) ** 2 / var * centred
    e_eps = s / var * centred
    return (resp * (e_eps - e_x0)).sum(1)


def mixture_moments(s=0.0):
    w, m, c = marginal(s)
    mean = (w[:, None] * m).sum(0)
    second = sum(w[k] * (torch.diag(c[k] ** 2) + torch.outer(m[k], m[k])) for k in range(len(w)))
    return mean, second - torch.outer(mean, mean)


def mixture_cdf(z, direction, s=0.0):
    """CDF of <direction, x_s> (a 1-D Gaussian mixture) at z."""
    w, m, c = marginal(s)
    loc = m @ direction
    scale = torch.sqrt((c**2) @ direction**2)
    return (w * 0.5 * (1 + torch.erf((z[:, None] - loc) / (scale * math.sqrt(2))))).sum(1)


DIRECTIONS = [
    torch.tensor(d, dtype=torch.float64) / math.hypot(*d) for d in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, -2.0))
]


def ks_distance(samples, s=0.0):
    """The largest Kolmogorov-Smirnov distance over a few 1-D projections."""
    worst = 0.0
    n = samples.shape[0]
    for d in DIRECTIONS:
        z = torch.sort(samples.double() @ d).values
        cdf = mixture_cdf(z, d, s)
        upper = torch.arange(1, n + 1, dtype=torch.float64) / n
        worst = max(worst, float(torch.maximum(upper - cdf, cdf - (upper - 1 / n)).max()))
    return worst


def assert_matches_mixture(samples, s=0.0, mean_tol=0.06, cov_tol=0.12, ks_tol=0.025):
    """Moments and projected CDFs of samples against the closed-form mixture at sigma = s.

    With N = 2e4 the Monte Carlo standard error is about 0.012 for the mean and at most ~0.03 for a
    covariance entry; a KS distance of 0.025 has p < 1e-10 under pure sampling noise.
    """
    mean, cov = mixture_moments(s)
    x = samples.double()
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0), mean, atol=mean_tol, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=cov_tol, rtol=0)
    assert ks_distance(x, s) < ks_tol


def exact_samples(s, n, seed):
    """Independent draws from the closed-form mixture at sigma = s."""
    g = torch.Generator().manual_seed(seed)
    w, m, c = marginal(s)
    k = torch.multinomial(w, n, replacement=True, generator=g)
    return m[k] + c[k] * torch.randn(n, 2, generator=g, dtype=torch.float64)


def component_statistics(x, s):
    """Samples split by their most likely component at sigma = s: fractions, means, variances."""
    w, m, c = marginal(s)
    log_joint = -0.5 * (((x[:, None] - m) / c) ** 2).sum(-1) - torch.log(c).sum(-1) + torch.log(w)
    k = log_joint.argmax(1)
    return (
        torch.stack([(k == i).double().mean() for i in range(len(w))]),
        torch.stack([x[k == i].mean(0) for i in range(len(w))]),
        torch.stack([x[k == i].var(0) for i in range(len(w))]),
    )


def assert_components_match(samples, s=0.0, frac_tol=0.025, mean_tol=0.05, var_tol=0.025):
    """Per-component statistics against those of 50,000 exact draws classified the same way.

    The components are narrow (variances 0.09 to 0.36), so this sees errors that the global
    moments hide: a 20% too large SDE std moves a component variance by 0.03 to 0.1, while
    with 2e4 samples the Monte Carlo error of a component variance is below 0.01.
    """
    got = component_statistics(samples.double(), s)
    want = component_statistics(exact_samples(s, 50_000, seed=99), s)
    for g, w, tol in zip(got, want, (frac_tol, mean_tol, var_tol)):
        torch.testing.assert_close(g, w, atol=tol, rtol=0)


def noise(n=N, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- the helper itself


def test_closed_form_velocity_is_the_conditional_expectation():
    # Regression identities, checked by Monte Carlo on (x0, eps) pairs:
    # E[v(x_s)] = E[eps - x0] = -E[x0], and E[v(x_s) x_s^T] = E[(eps - x0) x_s^T] = s I - (1 - s) E[x0 x0^T].
    g = torch.Generator().manual_seed(1)
    n = 200_000
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    x0 = MEANS[k] + STDS[k] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    for s in (0.2, 0.5, 0.8):
        xs = (1 - s) * x0 + s * eps
        v = velocity(xs, torch.full((n,), s, dtype=torch.float64))
        target = eps - x0
        # the projection of target onto functions of x_s: residual is uncorrelated with x_s, and
        # the velocity has smaller variance than the target (it is a conditional mean)
        torch.testing.assert_close((target - v).mean(0), torch.zeros(2, dtype=torch.float64), atol=0.02, rtol=0)
        torch.testing.assert_close(((target - v).T @ xs) / n, torch.zeros(2, 2, dtype=torch.float64), atol=0.02, rtol=0)
        torch.testing.assert_close(
            (v.T @ xs) / n, s * torch.eye(2, dtype=torch.float64) - (1 - s) * (x0.T @ x0) / n, atol=0.03, rtol=0
        )


def test_closed_form_velocity_at_the_endpoints():
    x = noise(50, seed=2)
    # sigma = 1: x_1 = eps, so E[eps | x] = x and E[x0 | x] = E[x0]
    mean, _ = mixture_moments()
    torch.testing.assert_close(velocity(x, torch.ones(50, dtype=torch.float64)), x - mean, atol=1e-12, rtol=0)
    # sigma = 0: x_0 = x0, so E[x0 | x] = x and E[eps | x] = 0
    torch.testing.assert_close(velocity(x, torch.zeros(50, dtype=torch.float64)), -x, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- ODE


@pytest.mark.parametrize("solver,steps", [("euler", 200), ("heun", 50), ("dpmpp_2m", 100)])
def test_ode_transports_noise_to_the_mixture(solver, steps):
    out = sample_ode(velocity, noise(), torch.linspace(1, 0, steps + 1, dtype=torch.float64), solver)
    assert_matches_mixture(out)
    assert_components_match(out)


def test_ode_solvers_agree_with_an_adaptive_reference_path_by_path():
    # Discretisation error alone, without sampling noise: every sample against dopri5.
    z = noise(500, seed=3)
    reference = sample_adaptive(velocity, z, method="dopri5", rtol=1e-8, atol=1e-8)
    sigmas = torch.linspace(1, 0, 101, dtype=torch.float64)
    # observed (median, 99%): euler (0.014, 0.05), heun (5e-5, 1e-3), dpmpp_2m (7e-4, 5e-3)
    for solver, median_tol, tail_tol in (("euler", 0.03, 0.1), ("heun", 5e-4, 5e-3), ("dpmpp_2m", 3e-3, 0.02)):
        out = sample_ode(velocity, z, sigmas, solver)
        err = (out - reference).norm(dim=1)
        assert err.median() < median_tol, solver
        assert err.quantile(0.99) < tail_tol, solver


def test_adaptive_reference_transports_noise_to_the_mixture():
    assert_matches_mixture(sample_adaptive(velocity, noise(seed=13), rtol=1e-6, atol=1e-6))


@pytest.mark.parametrize("s", [0.7, 0.4])
def test_ode_marginal_at_an_intermediate_sigma(s):
    steps = round((1 - s) * 200)
    out = sample_ode(velocity, noise(seed=4), torch.linspace(1, s, steps + 1, dtype=torch.float64), "heun")
    assert_matches_mixture(out, s)
    assert_components_match(out, s)


def test_ode_is_not_the_identity():
    # Guard: the statistics above would fail for the untransported noise.
    with pytest.raises(AssertionError):
        assert_matches_mixture(noise())
    with pytest.raises(AssertionError):
        assert_matches_mixture(noise(), s=0.4)


# ---------------------------------------------------------------- SDE


def sample_sde(x, sigmas, form="flow_grpo", level=0.7, seed=5):
    g = torch.Generator().manual_seed(seed)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, s.expand(x.shape[0]))
        x = sde_step(
            v, x, s, s_next, form, level, noise=torch.randn(x.shape, generator=g, dtype=torch.float64)
        ).sample.double()
    return x


@pytest.mark.parametrize("level", [0.3, 0.7, 1.0])
def test_flow_grpo_sde_transports_noise_to_the_mixture(level):
    out = sample_sde(noise(seed=6), torch.linspace(1, 0, 201, dtype=torch.float64), "flow_grpo", level)
    assert_matches_mixture(out)
    assert_components_match(out)


@pytest.mark.parametrize("level", [0.3, 0.8])
def test_dance_grpo_sde_transports_noise_to_the_mixture(level):
    out = sample_sde(noise(seed=7), torch.linspace(1, 0, 201, dtype=torch.float64), "dance_grpo", level)
    assert_matches_mixture(out)
    assert_components_match(out)


def test_flow_grpo_sde_keeps_the_marginals_from_an_intermediate_sigma():
    # Start from exact samples of x_0.6 and let the SDE run to 0.3 and then to 0.
    x = exact_samples(0.6, N, seed=8)
    mid = sample_sde(x, torch.linspace(0.6, 0.3, 61, dtype=torch.float64), seed=9)
    assert_matches_mixture(mid, 0.3)
    assert_components_match(mid, 0.3)
    end = sample_sde(mid, torch.linspace(0.3, 0.0, 61, dtype=torch.float64), seed=10)
    assert_matches_mixture(end)
    assert_components_match(end)


def test_flow_grpo_sde_paths_differ_from_the_ode_paths():
    # Same noise, same marginals, but the SDE is not the ODE: the per-path maps differ.
    z = noise(2000, seed=11)
    sigmas = torch.linspace(1, 0, 101, dtype=torch.float64)
    ode = sample_ode(velocity, z, sigmas, "heun")
    sde = sample_sde(z, sigmas, seed=12)
    assert (ode - sde).norm(dim=1).mean() > 0.3
