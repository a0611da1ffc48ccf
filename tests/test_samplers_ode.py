"""The sigma grid and the Euler sampler against closed forms."""

import pytest
import torch

from flowrl.samplers import euler_step, flow_sigmas, sample_euler


def shifted(sigma, shift):
    # SD3's timestep shift (Esser et al. 2024, eq. 23): sigma' = s * sigma / (1 + (s - 1) * sigma)
    return shift * sigma / (1 + (shift - 1) * sigma)


@pytest.mark.parametrize("steps", [1, 4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_grid_matches_the_shifted_linear_schedule(steps, shift):
    sigmas = flow_sigmas(steps, shift).double()
    # diffusers spaces steps linearly from 1 to the shifted smallest training sigma (1/1000),
    # shifts them, and appends the terminal 0.
    base = torch.linspace(1.0, shifted(torch.tensor(1e-3, dtype=torch.float64), shift), steps, dtype=torch.float64)
    expected = torch.cat([shifted(base, shift), torch.zeros(1, dtype=torch.float64)])
    assert sigmas.shape == (steps + 1,)
    torch.testing.assert_close(sigmas, expected, atol=1e-6, rtol=0)
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="shift must be positive, got -1"):
        flow_sigmas(4, shift=-1)


def test_euler_step_is_the_explicit_rule():
    x, v = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    torch.testing.assert_close(euler_step(v, x, 0.8, 0.6), torch.tensor([0.9, -2.8]))


@pytest.mark.parametrize("steps", [1, 3, 17])
def test_euler_is_exact_for_a_point_mass(steps):
    # For data concentrated at x0 the exact velocity is (x - x0) / sigma, constant along each
    # straight path, so Euler lands on x0 exactly on any grid.
    x0 = torch.tensor([[0.3, -0.7, 1.2]], dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample_euler(lambda x, s: (x - x0) / s.view(-1, 1), noise, flow_sigmas(steps).double())
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-9, rtol=0)


def gaussian_velocity(mean, std):
    """Exact rectified-flow velocity for data N(mean, std^2): E[noise - x0 | x_sigma]."""

    def velocity(x, sigma):
        s = sigma.view(-1, 1)
        var = (1 - s) ** 2 * std**2 + s**2
        centred = x - (1 - s) * mean
        return (s / var) * centred - (mean + (1 - s) * std**2 / var * centred)

    return velocity


def test_euler_converges_at_first_order_to_the_gaussian_transport():
    # The probability-flow ODE of Gaussian data maps noise e to mean + std * e exactly.
    mean, std = 0.5, 0.3
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = mean + std * noise
    errors = []
    for steps in (40, 80, 160):
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        out = sample_euler(gaussian_velocity(mean, std), noise, sigmas)
        errors.append((out - target).abs().max().item())
    assert errors[-1] < 0.02
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.6 < coarse / fine < 2.4  # halving the step halves the error: order one
