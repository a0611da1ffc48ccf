"""Orders of convergence of the fixed-step ODE solvers, against closed-form solutions and dopri5.

Gaussian data N(m, c^2) has the exact velocity E[eps - x0 | x_s] and an exact probability-flow map:
x_s = (1 - s) m + sqrt((1 - s)^2 c^2 + s^2) e for the path starting at x_1 = e. Euler must converge at
order one, Heun and DPM-Solver++(2M) at order two (its first-order first and last steps cost O(h^2)).
"""

import math

import pytest
import torch

from flowrl.samplers.ode import dpmpp_2m_step, sample_adaptive, sample_ode
from references import dpmpp_2m_reference

MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
STD = torch.tensor([0.3, 0.8, 1.5], dtype=torch.float64)


def gaussian_velocity(x, sigma):
    s = sigma.to(x).view(-1, 1)
    var = (1 - s) ** 2 * STD**2 + s**2
    centred = x - (1 - s) * MEAN
    return (s / var) * centred - (MEAN + (1 - s) * STD**2 / var * centred)


def gaussian_solution(e, s):
    return (1 - s) * MEAN + torch.sqrt((1 - s) ** 2 * STD**2 + s**2) * e


# A non-Gaussian field: a 2-component 1-D-per-dimension mixture, whose exact map has no closed form.
W = torch.tensor([0.4, 0.6], dtype=torch.float64)
MU = torch.tensor([[-1.5, 0.5], [1.0, -0.5]], dtype=torch.float64)
SD = torch.tensor([[0.4, 0.5], [0.6, 0.3]], dtype=torch.float64)


def mixture_velocity(x, sigma):
    s = sigma.to(x).view(-1, 1, 1)
    var = (1 - s) ** 2 * SD**2 + s**2
    centred = x.unsqueeze(1) - (1 - s) * MU
    logp = -0.5 * (centred**2 / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(W)
    resp = torch.softmax(logp, 1).unsqueeze(-1)
    return (resp * (s / var * centred - (MU + (1 - s) * SD**2 / var * centred))).sum(1)


def noise(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def uniform(n, end=0.0):
    return torch.linspace(1, end, n + 1, dtype=torch.float64)


def shifted(n, shift=3.0):
    u = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return shift * u / (1 + (shift - 1) * u)


def observed_orders(velocity, z, reference, grid, solver, counts):
    errors = [(sample_ode(velocity, z, grid(n), solver) - reference).abs().max().item() for n in counts]
    return errors, [math.log2(a / b) for a, b in zip(errors, errors[1:])]


# (solver, order bounds, step counts). DPM-Solver++(2M) works in log-SNR lambda = log((1 - s) / s),
# which is infinite at sigma = 1 and 0: on a sigma grid touching them its steps near the ends do not
# shrink in lambda, so it approaches order two only slowly (observed 1.6 -> 1.8 from N = 80 to 640 on a uniform grid, 1.4 -> 1.6 with shift 3);
# on an interior grid it is cleanly second order.
FULL_GRID = [
    ("euler", (0.9, 1.1), (20, 40, 80)),
    ("heun", (1.85, 2.15), (20, 40, 80)),
    ("dpmpp_2m", (1.3, 2.1), (160, 320, 640)),
]


@pytest.mark.parametrize("solver,bounds,counts", FULL_GRID)
@pytest.mark.parametrize("grid", [uniform, shifted], ids=["uniform", "shift3"])
def test_order_against_the_closed_form_gaussian_map(solver, bounds, counts, grid):
    z = noise(64, 3, seed=1)
    errors, orders = observed_orders(gaussian_velocity, z, gaussian_solution(z, 0.0), grid, solver, counts)
    assert errors[-1] < (0.1 if solver == "euler" else 1e-3)
    for p in orders:
        assert bounds[0] < p < bounds[1], (errors, orders)


@pytest.mark.parametrize("solver,bounds", [("euler", (0.95, 1.05)), ("heun", (1.9, 2.1)), ("dpmpp_2m", (1.9, 2.1))])
def test_order_on_an_interior_grid(solver, bounds):
    # From exact samples of x_0.95 to sigma = 0.05: no infinite log-SNR, no sigma_next = 0 case.
    z = noise(64, 3, seed=2)
    grid = lambda n: torch.linspace(0.95, 0.05, n + 1, dtype=torch.float64)  # noqa: E731
    errors, orders = observed_orders(
        gaussian_velocity, gaussian_solution(z, 0.95), gaussian_solution(z, 0.05), grid, solver, (32, 64, 128)
    )
    for p in orders:
        assert bounds[0] < p < bounds[1], (errors, orders)


@pytest.mark.parametrize(
    "solver,bounds,counts",
    [
        ("euler", (0.85, 1.1), (160, 320, 640)),
        ("heun", (1.9, 2.1), (40, 80, 160)),
        ("dpmpp_2m", (1.7, 2.1), (160, 320, 640)),
    ],
)
def test_order_against_dopri5_on_a_mixture(solver, bounds, counts):
    z = noise(64, 2, seed=3)
    reference = sample_adaptive(mixture_velocity, z, rtol=1e-10, atol=1e-10)
    errors, orders = observed_orders(mixture_velocity, z, reference, uniform, solver, counts)
    for p in orders:
        assert bounds[0] < p < bounds[1], (errors, orders)


def test_dopri5_reference_matches_the_closed_form():
    z = noise(32, 3, seed=4)
    out = sample_adaptive(gaussian_velocity, z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, gaussian_solution(z, 0.0), atol=1e-7, rtol=0)


# ---------------------------------------------------------------- DPM-Solver++(2M) by hand


@pytest.mark.parametrize(
    "grid",
    [uniform(10), shifted(7), uniform(12, 0.3), torch.tensor([0.9, 0.6, 0.5, 0.2, 0.05], dtype=torch.float64)],
    ids=["uniform", "shift3", "to0.3", "ragged"],
)
def test_dpmpp_2m_matches_the_algorithm_written_in_log_snr(grid):
    z = noise(16, 2, seed=5)
    torch.testing.assert_close(
        sample_ode(mixture_velocity, z, grid, "dpmpp_2m"),
        dpmpp_2m_reference(mixture_velocity, z, grid),
        atol=1e-12,
        rtol=1e-12,
    )


def test_dpmpp_2m_second_order_term_is_used_in_the_interior():
    # From sigma 0.8 to 0.6 with history at 0.9, the step differs from the first-order (Euler) step
    # by the hand-computed correction (sigma - sigma_next)/sigma * h/(2 h_prev) * (x0 - x0_prev).
    x, v = noise(4, 2, seed=6), noise(4, 2, seed=7)
    x0_prev = noise(4, 2, seed=8)
    from flowrl.samplers.ode import DpmHistory

    out, hist = dpmpp_2m_step(v, x, 0.8, 0.6, DpmHistory(x0_prev, torch.full((4,), 0.9, dtype=torch.float64)))
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    h, h_prev = lam(0.6) - lam(0.8), lam(0.8) - lam(0.9)
    x0 = x - 0.8 * v
    expected = x + (0.6 - 0.8) * v + (0.2 / 0.8) * h / (2 * h_prev) * (x0 - x0_prev)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(hist.x0, x0)
    torch.testing.assert_close(hist.sigma, torch.full((4,), 0.8, dtype=torch.float64))
