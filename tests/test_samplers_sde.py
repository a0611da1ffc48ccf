"""SDE transitions (samplers.sde) against hand-written Gaussian densities and the published forms."""

import math

import pytest
import torch
from torch.distributions import Normal

from flowrl.samplers.ode import euler_step
from flowrl.samplers.sde import SDE_FORMS, diffusion, gaussian_logprob, sde_mean_std, sde_step


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_logp(x_next, mean, std):
    """log N(x_next; mean, std^2) per element from torch.distributions, averaged over non-batch dims."""
    std = torch.as_tensor(std, dtype=torch.float64)
    if std.ndim == 1:
        std = std.view(-1, *([1] * (x_next.ndim - 1)))
    dist = Normal(mean.double(), std.expand_as(mean).double())
    return dist.log_prob(x_next.double()).flatten(1).mean(1)


def flow_grpo_reference(v, x, sigma, sigma_next, a):
    """Flow-GRPO (Liu et al. 2025, eq. 9 and its reference code), written out in float64.

    std_dev_t = a * sqrt(s / (1 - s)), with s in the denominator replaced by the next grid point when
    s == 1; dt = sigma_next - sigma < 0;
    mean = x * (1 + std_dev_t^2 / (2 s) * dt) + v * (1 + std_dev_t^2 (1 - s) / (2 s)) * dt;
    std = std_dev_t * sqrt(-dt).
    """
    x, v = x.double(), v.double()
    out_mean, out_std = [], []
    for i in range(x.shape[0]):
        s = float(sigma[i]) if torch.is_tensor(sigma) and sigma.ndim else float(sigma)
        sn = float(sigma_next[i]) if torch.is_tensor(sigma_next) and sigma_next.ndim else float(sigma_next)
        denominator = sn if s == 1.0 else s
        std_dev_t = a * math.sqrt(s / (1 - denominator))
        dt = sn - s
        out_mean.append(x[i] * (1 + std_dev_t**2 / (2 * s) * dt) + v[i] * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt)
        out_std.append(std_dev_t * math.sqrt(-dt))
    return torch.stack(out_mean), torch.tensor(out_std, dtype=torch.float64)


def dance_grpo_reference(v, x, sigma, sigma_next, eta):
    """DanceGRPO's flux_step (Xue et al. 2025) in float64: an Euler step plus -eta^2/2 * score * dsigma.

    x0_hat = x - s v; score = -(x - (1 - s) x0_hat) / s^2; mean = x + dsigma v + (-eta^2/2 score) dsigma;
    std = eta * sqrt(s - s_next).
    """
    x, v = x.double(), v.double()
    dsigma = sigma_next - sigma
    x0_hat = x - sigma * v
    score = -(x - x0_hat * (1 - sigma)) / sigma**2
    mean = x + dsigma * v + (-0.5 * eta**2 * score) * dsigma
    return mean, torch.full((x.shape[0],), eta * math.sqrt(sigma - sigma_next), dtype=torch.float64)


# The forms that discretise the reverse-time SDE with Euler-Maruyama (cps is a DDIM-like step instead).
EULER_MARUYAMA = ("flow_grpo", "dance_grpo")

# ---------------------------------------------------------------- log-probabilities


@pytest.mark.parametrize("form", SDE_FORMS)
def test_logp_is_the_gaussian_density_averaged_over_dimensions(form):
    x, v, noise = rand(6, 3, 4, seed=1), rand(6, 3, 4, seed=2), rand(6, 3, 4, seed=3)
    step = sde_step(v, x, 0.6, 0.5, form, noise=noise)
    assert step.logp.shape == (6,)
    torch.testing.assert_close(
        step.logp.double(), reference_logp(step.sample, step.mean, step.std), atol=1e-5, rtol=1e-6
    )
    # the drawn sample is mean + std * noise
    torch.testing.assert_close(step.sample, step.mean + step.std.view(-1, 1, 1) * noise, atol=1e-6, rtol=1e-6)


def test_gaussian_logprob_matches_closed_form_with_scalar_and_per_sample_std():
    x, mean = rand(5, 7, seed=4), rand(5, 7, seed=5)
    std = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0])
    torch.testing.assert_close(
        gaussian_logprob(x, mean, std).double(), reference_logp(x, mean, std), atol=1e-5, rtol=1e-6
    )
    # scalar std: the per-dimension average of -(x-m)^2/(2 s^2) - log s - log(2 pi)/2
    s = 0.3
    expected = (-((x.double() - mean.double()) ** 2) / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi)).mean(1)
    torch.testing.assert_close(gaussian_logprob(x, mean, torch.tensor(s)).double(), expected, atol=1e-5, rtol=1e-6)


def test_logp_is_an_average_not_a_sum_so_it_does_not_scale_with_dimension():
    # x_next == mean: logp = -log(std) - log(2 pi)/2 whatever the number of dimensions.
    for dims in (1, 16, 256):
        mean = rand(2, dims, seed=dims)
        std = torch.tensor([0.2, 0.7])
        expected = -torch.log(std.double()) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(gaussian_logprob(mean, mean, std).double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", SDE_FORMS)
def test_rescoring_a_stored_transition(form):
    x, v, v_other = rand(8, 2, 3, seed=6), rand(8, 2, 3, seed=7), rand(8, 2, 3, seed=8)
    sigma, sigma_next = torch.linspace(0.9, 0.3, 8), torch.linspace(0.8, 0.1, 8)
    step = sde_step(v, x, sigma, sigma_next, form, generator=torch.Generator().manual_seed(9))
    again = sde_step(v, x, sigma, sigma_next, form, x_next=step.sample)
    assert torch.equal(again.logp, step.logp)  # bit for bit
    assert torch.equal(again.sample, step.sample)
    other = sde_step(v_other, x, sigma, sigma_next, form, x_next=step.sample)
    if form == "flow_grpo":
        mean, std = flow_grpo_reference(v_other, x, sigma, sigma_next, 0.7)
    elif form == "cps":  # arXiv 2509.05952: (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat, std = s' sin(0.8 pi / 2)
        s, s_next = sigma.double().view(-1, 1, 1), sigma_next.double().view(-1, 1, 1)
        vo, xd = v_other.double(), x.double()
        std = sigma_next.double() * math.sin(0.8 * math.pi / 2)
        mean = (1 - s_next) * (xd - s * vo) + torch.sqrt(s_next**2 - std.view(-1, 1, 1) ** 2) * (xd + (1 - s) * vo)
    else:
        mean = torch.stack(
            [
                dance_grpo_reference(v_other[i : i + 1], x[i : i + 1], float(sigma[i]), float(sigma_next[i]), 0.3)[0][0]
                for i in range(8)
            ]
        )
        std = 0.3 * torch.sqrt((sigma - sigma_next).double())
    torch.testing.assert_close(other.logp.double(), reference_logp(step.sample, mean, std), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(other.logp, step.logp)


def test_rescoring_bf16_samples_scores_the_stored_bf16_value():
    # The returned sample is cast to the input dtype; its logp is that of the cast value.
    x, v = rand(4, 16, seed=10).bfloat16(), rand(4, 16, seed=11).bfloat16()
    step = sde_step(v, x, 0.7, 0.6, "flow_grpo", generator=torch.Generator().manual_seed(12))
    assert step.sample.dtype == torch.bfloat16
    mean, std = flow_grpo_reference(v.float(), x.float(), 0.7, 0.6, 0.7)
    torch.testing.assert_close(step.logp.double(), reference_logp(step.sample.float(), mean, std), atol=1e-4, rtol=1e-5)
    again = sde_step(v, x, 0.7, 0.6, "flow_grpo", x_next=step.sample)
    assert torch.equal(again.logp, step.logp)


# ---------------------------------------------------------------- the published forms


@pytest.mark.parametrize("sigma,sigma_next", [(0.9, 0.85), (0.5, 0.3), (0.2, 0.0), (0.04, 0.01)])
@pytest.mark.parametrize("a", [0.7, 0.3, 1.0])
def test_flow_grpo_mean_and_std_closed_form(sigma, sigma_next, a):
    x, v = rand(5, 3, seed=13, dtype=torch.float64), rand(5, 3, seed=14, dtype=torch.float64)
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "flow_grpo", a)
    ref_mean, ref_std = flow_grpo_reference(v, x, sigma, sigma_next, a)
    torch.testing.assert_close(mean, ref_mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(std, ref_std, atol=1e-12, rtol=1e-12)
    g = a * math.sqrt(sigma / (1 - sigma))
    torch.testing.assert_close(
        diffusion("flow_grpo", torch.tensor(sigma), torch.tensor(sigma_next), torch.tensor(a)).double(),
        torch.tensor(g, dtype=torch.float64),
        atol=1e-6,
        rtol=1e-6,
    )


def test_flow_grpo_first_step_from_sigma_one_uses_the_next_grid_point():
    x, v = rand(3, 4, seed=15, dtype=torch.float64), rand(3, 4, seed=16, dtype=torch.float64)
    mean, std = sde_mean_std(v, x, 1.0, 0.9, "flow_grpo", 0.7)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    g = 0.7 * math.sqrt(1.0 / (1 - 0.9))  # = 0.7 * sqrt(10)
    torch.testing.assert_close(std, torch.full((3,), g * math.sqrt(0.1), dtype=torch.float64))
    ref_mean, _ = flow_grpo_reference(v, x, 1.0, 0.9, 0.7)
    torch.testing.assert_close(mean, ref_mean)


def test_flow_grpo_per_sample_sigmas_match_scalar_calls():
    x, v = rand(4, 2, seed=17, dtype=torch.float64), rand(4, 2, seed=18, dtype=torch.float64)
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.1], dtype=torch.float64)
    sigma_next = torch.tensor([0.95, 0.6, 0.45, 0.0], dtype=torch.float64)
    level = torch.tensor([0.7, 0.5, 1.2, 0.3], dtype=torch.float64)
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "flow_grpo", level)
    for i in range(4):
        m_i, s_i = flow_grpo_reference(
            v[i : i + 1], x[i : i + 1], float(sigma[i]), float(sigma_next[i]), float(level[i])
        )
        torch.testing.assert_close(mean[i], m_i[0])
        torch.testing.assert_close(std[i], s_i[0])


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9), (0.5, 0.3), (0.2, 0.0)])
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_dance_grpo_mean_and_std_closed_form(sigma, sigma_next, eta):
    x, v = rand(5, 3, seed=19, dtype=torch.float64), rand(5, 3, seed=20, dtype=torch.float64)
    mean, std = sde_mean_std(v, x, sigma, sigma_next, "dance_grpo", eta)
    ref_mean, ref_std = dance_grpo_reference(v, x, sigma, sigma_next, eta)
    torch.testing.assert_close(mean, ref_mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(std, ref_std, atol=1e-12, rtol=1e-12)


def test_default_noise_levels_are_the_papers():
    x, v = rand(2, 3, seed=21, dtype=torch.float64), rand(2, 3, seed=22, dtype=torch.float64)
    for form, level in (("flow_grpo", 0.7), ("dance_grpo", 0.3)):
        default = sde_mean_std(v, x, 0.6, 0.4, form)
        explicit = sde_mean_std(v, x, 0.6, 0.4, form, level)
        torch.testing.assert_close(default[0], explicit[0], atol=0, rtol=0)
        torch.testing.assert_close(default[1], explicit[1], atol=0, rtol=0)
    _, std = sde_mean_std(v, x, 0.6, 0.4, "dance_grpo")
    torch.testing.assert_close(std, torch.full((2,), 0.3 * math.sqrt(0.2), dtype=torch.float64))


@pytest.mark.parametrize("form", EULER_MARUYAMA)
def test_sde_drift_is_the_ode_drift_minus_half_g_squared_times_the_score(form):
    # For Gaussian data N(m, c^2) the score of x_s is known in closed form; the SDE mean must be
    # x + (v - g^2/2 * score) * d with the exact v, i.e. the reverse-time SDE with matching marginals.
    m, c, s, s_next, level = 0.4, 0.5, 0.6, 0.55, 0.8
    x = rand(6, 1, seed=23, dtype=torch.float64)
    var = (1 - s) ** 2 * c**2 + s**2
    score = -(x - (1 - s) * m) / var
    # v = E[eps - x0 | x]: E[eps|x] = -s * score, E[x0|x] = (x - s E[eps|x]) / (1 - s)
    e_eps = -s * score
    v = e_eps - (x - s * e_eps) / (1 - s)
    g2 = level**2 * (s / (1 - s)) if form == "flow_grpo" else level**2
    mean, _ = sde_mean_std(v, x, s, s_next, form, level)
    torch.testing.assert_close(mean, x + (v - 0.5 * g2 * score) * (s_next - s), atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------- limits and errors


@pytest.mark.parametrize("form", SDE_FORMS)
def test_zero_noise_level_is_an_euler_step(form):
    x, v = rand(4, 5, seed=24), rand(4, 5, seed=25)
    mean, std = sde_mean_std(v, x, 0.7, 0.5, form, 0.0)
    # (cps at eta 0 is DDIM, the same step through the clean and noise estimates: float32 rounding apart)
    torch.testing.assert_close(mean, euler_step(v, x, 0.7, 0.5), atol=1e-6 if form == "cps" else 1e-7, rtol=0)
    assert torch.all(std == 0)
    step = sde_step(v, x, 0.7, 0.5, form, 0.0, noise=rand(4, 5, seed=26))
    torch.testing.assert_close(step.sample, x + (0.5 - 0.7) * v, atol=1e-6, rtol=0)
    assert torch.isnan(step.logp).all()  # a deterministic step has no density


def test_gaussian_logprob_is_nan_only_for_the_rows_whose_std_is_zero():
    x, mean = rand(3, 4, seed=29, dtype=torch.float64), rand(3, 4, seed=30, dtype=torch.float64)
    std = torch.tensor([0.5, 0.0, 0.2], dtype=torch.float64)
    logp = gaussian_logprob(x, mean, std)
    assert torch.isnan(logp[1]) and not torch.isnan(logp[[0, 2]]).any()
    for row in (0, 2):
        assert float(logp[row]) == pytest.approx(float(Normal(mean[row], std[row]).log_prob(x[row]).mean()), rel=1e-12)


@pytest.mark.parametrize("form", EULER_MARUYAMA)
def test_small_noise_level_converges_to_euler_quadratically(form):
    x, v = rand(4, 5, seed=27, dtype=torch.float64), rand(4, 5, seed=28, dtype=torch.float64)
    euler = x + (0.3 - 0.6) * v
    gaps = [(sde_mean_std(v, x, 0.6, 0.3, form, a)[0] - euler).abs().max().item() for a in (0.1, 0.05)]
    assert gaps[0] > 0
    assert gaps[0] / gaps[1] == pytest.approx(4.0, rel=1e-9)  # the correction is proportional to a^2


def test_unknown_form_is_rejected():
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"unknown SDE form 'ddim'; expected one of \['flow_grpo', 'dance_grpo', 'cps'\]"
    ):
        sde_step(x, x, 0.5, 0.4, "ddim")
    with pytest.raises(ValueError, match="unknown SDE form"):
        sde_mean_std(x, x, 0.5, 0.4, "Flow_GRPO")
    with pytest.raises(ValueError, match="unknown SDE form"):
        diffusion("euler", torch.tensor(0.5), torch.tensor(0.4), torch.tensor(0.7))


@pytest.mark.parametrize("sigma,sigma_next", [(0.4, 0.5), (0.5, 0.5), (1.2, 0.5), (0.5, -0.1)])
def test_bad_sigmas_are_rejected(sigma, sigma_next):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="an SDE step needs 1 >= sigma > sigma_next >= 0"):
        sde_step(x, x, sigma, sigma_next, "flow_grpo")


def test_one_bad_per_sample_sigma_is_rejected():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="an SDE step needs"):
        sde_mean_std(x, x, torch.tensor([0.5, 0.5, 0.3]), torch.tensor([0.4, 0.4, 0.3]))


@pytest.mark.parametrize("form", SDE_FORMS)
def test_negative_noise_level_is_rejected(form):
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="noise level"):
        sde_step(x, x, 0.5, 0.4, form, -0.5, noise=torch.ones(2, 3))
