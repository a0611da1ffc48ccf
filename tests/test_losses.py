"""Policy losses against hand computations, exact references and gradient checks."""

import pytest
import torch

from flowrl.losses import (
    LOSSES,
    aggregate,
    clipped_surrogate,
    gaussian_kl,
    get_loss,
    kl_estimate,
    policy_loss,
    register_loss,
    regression_surrogate,
    sequence_log_ratio,
)

T = torch.tensor


def test_clipped_surrogate_hand_computed_asymmetric():
    # ratios 0.5, 1.0, 1.5, 1.5 with advantages +1, +1, +1, -1; bounds [0.8, 1.3]
    log_ratio = torch.log(T([0.5, 1.0, 1.5, 1.5]))
    adv = T([1.0, 1.0, 1.0, -1.0])
    loss, clipped = clipped_surrogate(log_ratio, adv, eps_low=0.2, eps_high=0.3)
    # A>0: -min(r, clip(r)) -> -0.5 (unclipped is smaller), -1, -1.3 (clipped); A<0: -min(-1.5, -1.3) = 1.5
    assert torch.allclose(loss, T([-0.5, -1.0, -1.3, 1.5]))
    assert clipped.tolist() == [False, False, True, False]


def test_clip_removes_the_gradient_exactly_where_it_binds():
    log_ratio = torch.log(T([0.5, 1.0, 1.5, 1.5], dtype=torch.float64)).requires_grad_()
    adv = T([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    loss, _ = clipped_surrogate(log_ratio, adv, eps_low=0.2, eps_high=0.3)
    loss.sum().backward()
    # d/dlogr of -A r = -A r where unclipped, 0 where clipped
    assert torch.allclose(log_ratio.grad, T([-0.5, -1.0, 0.0, 1.5], dtype=torch.float64))


def test_regression_surrogate_hand_computed():
    log_ratio = T([0.2, 0.0, -0.1, 0.3])
    adv = T([1.0, -1.0, 0.5, 0.0])
    loss, _ = regression_surrogate(log_ratio, adv, scale=0.1)
    assert torch.allclose(loss, (log_ratio / 0.1 - adv) ** 2)
    # centred within groups: group 0 mean 0.1, group 1 mean 0.1
    loss, _ = regression_surrogate(log_ratio, adv, scale=0.1, group_ids=T([0, 0, 1, 1]))
    assert torch.allclose(loss, (T([0.1, -0.1, -0.2, 0.2]) / 0.1 - adv) ** 2)
    # a shared shift of the policy's log-probs in a group leaves the centred loss unchanged
    shifted, _ = regression_surrogate(log_ratio + T([5.0, 5.0, -2.0, -2.0]), adv, scale=0.1, group_ids=T([0, 0, 1, 1]))
    assert torch.allclose(loss, shifted, atol=1e-4)


def test_sequence_log_ratio_is_the_masked_token_mean():
    logp = T([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    old = T([[-1.5, -2.0, -2.0], [-1.0, -1.0, 0.0]])
    mask = T([[True, True, True], [True, True, False]])
    assert torch.allclose(sequence_log_ratio(logp, old, mask), T([(0.5 + 0 - 1) / 3, 0.5]))
    with pytest.raises(ValueError, match="no valid tokens"):
        sequence_log_ratio(logp, old, torch.zeros_like(mask))


def test_kl_estimators_are_exact_in_expectation_on_a_categorical():
    # E_pi[k1] = E_pi[k3] = KL(pi || ref) exactly; k2's expectation is half the second moment
    pi = torch.softmax(T([0.3, -1.0, 2.0, 0.5], dtype=torch.float64), 0)
    ref = torch.softmax(T([0.0, 0.4, 1.0, -0.2], dtype=torch.float64), 0)
    exact = float((pi * (pi.log() - ref.log())).sum())
    for name in ("k1", "k3"):
        assert float((pi * kl_estimate(pi.log(), ref.log(), name)).sum()) == pytest.approx(exact, rel=1e-12)
    assert float((pi * kl_estimate(pi.log(), ref.log(), "k2")).sum()) == pytest.approx(
        float((pi * 0.5 * (pi.log() - ref.log()) ** 2).sum())
    )
    assert bool((kl_estimate(pi.log(), ref.log(), "k3") >= 0).all())
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(pi.log(), ref.log(), "k4")


def test_gaussian_kl_matches_torch_distributions():
    mean = torch.randn(3, 2, 4, dtype=torch.float64)
    ref = torch.randn(3, 2, 4, dtype=torch.float64)
    std = T([0.5, 1.0, 2.0], dtype=torch.float64)
    expected = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, std.view(3, 1, 1)), torch.distributions.Normal(ref, std.view(3, 1, 1))
        )
        .flatten(1)
        .mean(1)
    )
    assert torch.allclose(gaussian_kl(mean, ref, std), expected)
    with pytest.raises(ValueError, match="positive"):
        gaussian_kl(mean, ref, torch.zeros(3))


def test_aggregation_modes_hand_computed():
    values = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = T([[True, True, True], [True, False, False]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum-norm").item() == pytest.approx(10 / (2 * 3))
    assert aggregate(values, mask, "seq-mean-token-sum-norm", max_length=10).item() == pytest.approx(10 / 20)
    assert aggregate(T([1.0, 3.0]), weight=T([2.0, 0.5])).item() == pytest.approx((2 + 1.5) / 2)
    with pytest.raises(ValueError, match="token-sum-mean"):
        aggregate(values, mask, "token-sum-mean")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batches_with_a_global_normaliser_give_the_full_batch_gradient(mode):
    torch.manual_seed(0)
    theta = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    old = torch.randn(6, 5, dtype=torch.float64)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    adv = torch.randn(6, dtype=torch.float64)
    full, _ = policy_loss(theta, old, adv, mask=mask, aggregation=mode)
    (full_grad,) = torch.autograd.grad(full, theta)
    normalizer = {"token-mean": float(mask.sum()), "seq-mean-token-sum": 6.0, "seq-mean-token-sum-norm": 6.0 * 5}.get(
        mode
    )
    if mode == "seq-mean-token-mean":
        normalizer = 6.0  # per-sequence means are local; only the count of sequences is global
    total = 0
    for rows in (slice(0, 2), slice(2, 6)):
        part, _ = policy_loss(
            theta[rows], old[rows], adv[rows], mask=mask[rows], aggregation=mode, normalizer=normalizer
        )
        total = total + part
    (micro_grad,) = torch.autograd.grad(total, theta)
    assert torch.allclose(full_grad, micro_grad)
    assert total.item() == pytest.approx(full.item())


def test_policy_loss_on_policy_equals_minus_mean_advantage_and_reports_stats():
    logp = torch.randn(4, 3)
    adv = T([1.0, -1.0, 2.0, 0.0])
    loss, stats = policy_loss(logp, logp.clone(), adv)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert stats["ratio/mean"] == 1.0 and stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0
    assert stats["advantage/mean"] == pytest.approx(0.5)


def test_policy_loss_kl_terms():
    logp = T([-1.0, -2.0])
    ref = T([-1.5, -1.0])
    loss, stats = policy_loss(logp, logp.clone(), T([0.0, 0.0]), logp_ref=ref, beta=0.5, kl_estimator="k1")
    assert loss.item() == pytest.approx(0.5 * ((0.5 + -1.0) / 2))
    assert stats["loss/kl"] == pytest.approx(-0.25)
    loss, _ = policy_loss(logp, logp.clone(), T([0.0, 0.0]), kl_values=T([0.2, 0.4]), beta=2.0)
    assert loss.item() == pytest.approx(2.0 * 0.3)
    with pytest.raises(ValueError, match="logp_ref"):
        policy_loss(logp, logp.clone(), T([0.0, 0.0]), beta=0.1)


def test_gspo_uses_one_ratio_per_sequence():
    logp = T([[-1.0, -1.0], [-1.0, -1.0]])
    old = T([[-1.0, -1.2], [-1.0, -1.0]])  # sequence 0: mean log-ratio 0.1, ratio e^0.1 (clipped)
    loss, stats = policy_loss(logp, old, T([1.0, 1.0]), loss="gspo", sequence_level=True)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-(1 + 4e-4 + 1.0) / 2, rel=1e-6)


def test_loss_registry():
    assert {"clip", "reg", "gspo"} <= set(LOSSES)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("clip")(clipped_surrogate)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        get_loss("ppo")
    with pytest.raises(ValueError, match="eps_low"):
        clipped_surrogate(T([0.0]), T([1.0]), eps_low=1.5)


def test_gradcheck_of_the_losses():
    torch.manual_seed(1)
    log_ratio = (0.05 * torch.randn(6, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: clipped_surrogate(x, adv, eps_low=0.2, eps_high=0.28)[0], (log_ratio,))
    assert torch.autograd.gradcheck(
        lambda x: regression_surrogate(x, adv, scale=0.3, group_ids=T([0, 0, 0, 1, 1, 1]))[0], (log_ratio,)
    )
    ref = torch.randn(6, dtype=torch.float64)
    for name in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x: kl_estimate(x, ref, name), (log_ratio,))
    mean = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m: gaussian_kl(m, torch.zeros(2, 3, dtype=torch.float64), T([0.5, 2.0], dtype=torch.float64)), (mean,)
    )
    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.01 * torch.randn(3, 4, dtype=torch.float64)
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    assert torch.autograd.gradcheck(
        lambda x: policy_loss(
            x,
            old,
            T([1.0, -0.5, 0.2], dtype=torch.float64),
            mask=mask,
            logp_ref=old,
            beta=0.1,
            aggregation="seq-mean-token-mean",
        )[0],
        (logp,),
    )
    assert torch.autograd.gradcheck(
        lambda x: policy_loss(
            x,
            old,
            T([1.0, -0.5, 0.2], dtype=torch.float64),
            mask=mask,
            loss="gspo",
            sequence_level=True,
            loss_options=dict(eps_low=0.2, eps_high=0.2),
        )[0],
        (logp,),
    )
