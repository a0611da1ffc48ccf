"""`generate`: the deterministic sampler and the SDE one (eta > 0) against a closed form, and
per-image seeding that does not depend on how images are batched; `sampler` binds its settings."""

import math

import pytest
import torch

from flowrl.generate import generate, sampler
from flowrl.policies.base import TextConditioning

DATA_STD = 0.5


class GaussianDataPolicy:
    """A policy whose velocity is exact for data x0 ~ N(0, DATA_STD^2) per pixel: with
    x = (1 - s) x0 + s eps, E[eps - x0 | x] = (s - (1 - s) d^2) / ((1 - s)^2 d^2 + s^2) * x."""

    sample_shape = (1, 8, 8)
    device = torch.device("cpu")

    def encode(self, prompts):
        empty = torch.zeros(len(prompts), 1, 1)
        return TextConditioning(empty, empty[:, 0], empty[:1], empty[:1, 0])

    def velocity(self, x, sigma, cond, guidance=1.0):
        s = sigma.view(-1, 1, 1, 1).double()
        d2 = DATA_STD**2
        return ((s - (1 - s) * d2) / ((1 - s) ** 2 * d2 + s**2) * x.double()).to(x.dtype)

    def decode(self, x):
        return x


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.7])
def test_both_samplers_reach_the_data_distribution(eta):
    # 2,000 images x 64 pixels: the sample std is within about 0.4% of DATA_STD by chance;
    # a wrongly scaled SDE noise or drift moves it by far more (eta 0.7 without the score
    # correction would add eta^2 = 0.49 of variance)
    images = generate(
        GaussianDataPolicy(), ["x"] * 2000, list(range(2000)), steps=200, guidance=1.0, batch_size=500, eta=eta
    )
    std = images.double().std().item()
    assert abs(std - DATA_STD) < 0.02, std
    assert abs(images.double().mean().item()) < 0.01


def test_sde_images_depend_on_their_own_seed_only():
    policy = GaussianDataPolicy()
    batched = generate(policy, ["x"] * 5, [11, 12, 13, 14, 15], steps=6, eta=0.3, batch_size=5)
    alone = generate(policy, ["x"], [13], steps=6, eta=0.3, batch_size=1)
    torch.testing.assert_close(alone[0], batched[2])
    ode = generate(policy, ["x"] * 5, [11, 12, 13, 14, 15], steps=6, batch_size=2)
    assert not torch.allclose(ode, batched)  # eta > 0 adds the step noise
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("eta", [-0.1, math.inf, math.nan])
def test_a_bad_eta_fails_naming_it(eta):
    with pytest.raises(ValueError, match="eta"):
        generate(GaussianDataPolicy(), ["x"], [0], steps=2, eta=eta)
    with pytest.raises(ValueError, match="eta"):
        sampler(GaussianDataPolicy(), 2, 1.0, eta=eta)  # when built, before any image is drawn


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_a_sampler_is_generate_with_its_settings_bound(eta):
    policy = GaussianDataPolicy()
    sample = sampler(policy, 6, 1.0, eta=eta, batch_size=2)
    expected = generate(policy, ["x"] * 3, [4, 5, 6], steps=6, guidance=1.0, batch_size=2, eta=eta)
    assert torch.equal(sample(["x"] * 3, [4, 5, 6]), expected)
    with pytest.raises(ValueError, match="batch_size"):
        sampler(policy, 6, 1.0, batch_size=0)
