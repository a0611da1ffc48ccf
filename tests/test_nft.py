"""objective=nft (DiffusionNFT): the loss against closed forms (value by hand, its minimiser, its
first step equal to AWM's), and the trainer running on it."""

import math

import numpy as np
import pytest
import torch

from conftest import metric_records, tiny_run
from flowrl.config import build_config
from flowrl.losses import policy_loss
from flowrl.losses.nft import nft_loss, optimality
from flowrl.samplers.matching import MatchingPoints, score_matching
from flowrl.trainer import train


def test_the_loss_is_the_weighted_squared_errors_of_the_two_implicit_policies():
    g = torch.Generator().manual_seed(0)
    v, old, u = (torch.randn(3, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    advantages = torch.tensor([1.2, -0.4, 9.0], dtype=torch.float64)  # the last one past the scale: r clips to 1
    weight = torch.tensor([1.0, 0.5, 2.0])
    loss, stats = nft_loss(v, old, u, advantages, nft_beta=0.3, scale=2.0, weight=weight, normalizer=5.0)
    expected = 0.0
    for i in range(3):
        r = min(max(0.5 + advantages[i].item() / 4.0, 0.0), 1.0)
        v_pos = old[i].numpy() + 0.3 * (v[i].numpy() - old[i].numpy())
        v_neg = old[i].numpy() - 0.3 * (v[i].numpy() - old[i].numpy())
        point = r * np.mean((v_pos - u[i].numpy()) ** 2) + (1 - r) * np.mean((v_neg - u[i].numpy()) ** 2)
        expected += weight[i].item() * point * 2.0 / 0.3
    assert loss.item() == pytest.approx(expected / 5.0, rel=1e-6)
    assert stats["loss/total"] == pytest.approx(expected / 5.0, rel=1e-6)
    assert optimality(advantages, 2.0).tolist() == pytest.approx([0.8, 0.4, 1.0])


def test_the_adaptive_loss_divides_each_clean_image_error_by_its_mean_size():
    g = torch.Generator().manual_seed(3)
    v, old, u = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    advantages, sigma = (
        torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64),
        torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64),
    )
    loss, _ = nft_loss(v, old, u, advantages, nft_beta=0.5, scale=4.0, sigma=sigma)
    expected = 0.0
    for i in range(3):
        r = 0.5 + advantages[i].item() / 8.0
        terms = []
        for sign in (1, -1):
            d = sigma[i].item() * (old[i].numpy() + sign * 0.5 * (v[i].numpy() - old[i].numpy()) - u[i].numpy())
            terms.append(np.mean(d**2) / np.mean(np.abs(d)))
        expected += (r * terms[0] + (1 - r) * terms[1]) * 4.0 / 0.5
    assert loss.item() == pytest.approx(expected / 3, rel=1e-9)  # token-mean over the 3 points


def test_the_adaptive_first_step_is_the_error_direction_of_unit_size():
    """At v = v_old the adaptive gradient is 2 scale (2r - 1) sigma e / (n mean|e|) per point (e
    = v_old - u over n values): as strong for a large error as for a small one."""
    g = torch.Generator().manual_seed(4)
    old, u = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)
    advantages, sigma = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.8, 0.3], dtype=torch.float64)
    gradients = []
    for size in (1.0, 100.0):
        v = (old * size).clone().requires_grad_(True)
        loss, _ = nft_loss(v, old * size, u * size, advantages, nft_beta=0.7, scale=5.0, sigma=sigma)
        (gradient,) = torch.autograd.grad(loss, v)
        gradients.append(gradient)
        e = old - u
        r = 0.5 + advantages / 10.0
        closed = (
            2 * 5.0 * (2 * r - 1).view(-1, 1) * sigma.view(-1, 1) * e / (6 * e.abs().mean(1, keepdim=True)) / 2
        )  # / 2: mean over points
        assert torch.allclose(gradient, closed, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("advantage", [1.5, -1.5, 0.0])
def test_each_points_loss_is_lowest_a_finite_step_from_the_old_velocity(advantage):
    """The minimiser over v is v_old + (2r - 1)(u - v_old) / beta: towards the target for a
    winner, away from it for a loser, but a bounded step either way (a ratio's loss is not)."""
    g = torch.Generator().manual_seed(1)
    old, u = torch.randn(1, 6, generator=g, dtype=torch.float64), torch.randn(1, 6, generator=g, dtype=torch.float64)
    beta, scale = 0.5, 3.0
    r = 0.5 + advantage / (2 * scale)
    best = old + (2 * r - 1) * (u - old) / beta
    v = best.clone().requires_grad_(True)
    loss, _ = nft_loss(v, old, u, torch.tensor([advantage]), nft_beta=beta, scale=scale)
    (gradient,) = torch.autograd.grad(loss, v)
    assert gradient.abs().max() < 1e-12
    for _ in range(5):
        moved = best + 0.1 * torch.randn(1, 6, generator=g, dtype=torch.float64)
        assert nft_loss(moved, old, u, torch.tensor([advantage]), nft_beta=beta, scale=scale)[0] > loss


def test_the_first_step_is_advantage_weighted_matchings():
    """At v = v_old (the weights that made the rollout), the gradient of the NFT loss through a
    real network equals that of AWM's clipped surrogate with the same advantages."""
    from conftest import tiny_model
    from flowrl.policies.base import rollout_velocity
    from flowrl.policies.toy import ToyPolicy

    policy = ToyPolicy(tiny_model())
    cond = policy.encode(["a red circle", "two blue squares"])
    velocity = rollout_velocity(policy, cond, 4.0)
    g = torch.Generator().manual_seed(2)
    shape = policy.sample_shape
    points = MatchingPoints(
        torch.randn(4, *shape, generator=g),
        torch.randn(4, *shape, generator=g),
        torch.tensor([0.9, 0.7, 0.4, 0.2]),
        torch.tensor([0, 1, 1, 0]),
    )
    advantages = torch.tensor([1.3, -0.8, 0.4, -0.9])
    weight = torch.tensor([1.0, 1.0, 0.5, 2.0])
    params = [p for p in policy.transformer.parameters()]

    def gradient(loss):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten() for gr, p in zip(grads, params)])

    scored = score_matching(velocity, points)
    nft, _ = nft_loss(
        scored.velocity,
        scored.velocity.detach(),
        points.noise - points.x0,
        advantages,
        nft_beta=0.7,
        scale=5.0,
        weight=weight,
        normalizer=4.0,
    )
    scored = score_matching(velocity, points)
    awm, _ = policy_loss(
        scored.logp,
        scored.logp.detach(),
        advantages,
        loss="clip",
        loss_options={"eps_low": 1e-3, "eps_high": 1e-3},
        weight=weight,
        normalizer=4.0,
    )
    a, b = gradient(nft), gradient(awm)
    assert b.abs().max() > 0
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_an_nft_run_trains_and_resumes_exactly(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    def run(name, iterations, *extra):
        train(tiny_run(tiny_dir, tmp_path / name, f"iterations={iterations}", "objective=nft", "guidance=1.0", *extra))
        return metric_records(tmp_path / name, skip_first=True)

    straight = run("a", 3)
    run("b", 2)
    resumed = run("b", 3)
    wa, wb = (load_file(str(tmp_path / d / "checkpoint" / "trainable.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss/policy"] for r in straight] == [r["loss/policy"] for r in resumed]
    assert all(0 < r["nft/r_mean"] < 1 and r["loss/policy"] > 0 for r in straight)
    # several optimizer steps per iteration (v_old scored once, up front), and a KL to the reference
    several = run("c", 2, "train_batch=4", "inner_epochs=2", "beta=0.1")
    assert all(r["loss/kl"] >= 0 and math.isfinite(r["loss/total"]) for r in several)
    assert several[-1]["loss/kl"] > 0  # the weights left the reference


@pytest.mark.parametrize("weighting", ["adaptive", "uniform"])
def test_nft_raises_a_learnable_reward_over_an_untrained_control(tiny_dir, tmp_path, weighting):
    def rewards(name, lr):
        train(
            tiny_run(
                tiny_dir,
                tmp_path / name,
                "iterations=12",
                "method.group_size=4",
                f"lr={lr}",
                "checkpoint_every=100",
                "objective=nft",
                f"objective.weighting={weighting}",
            )
        )
        return [r["reward/mean"] for r in metric_records(tmp_path / name, skip_first=True)]

    control, trained = rewards("control", 1e-12), rewards("trained", 3e-3)
    assert control[0] == pytest.approx(trained[0])
    assert max(control) - min(control) < 0.03
    assert sum(trained[-4:]) / 4 > sum(control[-4:]) / 4 + 0.05


def test_the_ema_sampler_rolls_out_with_the_moving_average(tiny_dir, tmp_path):
    """objective.sampler=ema: with an average that hardly moves (ema=0.999999), the rollouts (and so the
    rewards) stay those of an untrained control while the trained weights move on; and the run
    resumes exactly."""
    from safetensors.torch import load_file

    def run(name, iterations, *extra):
        train(tiny_run(tiny_dir, tmp_path / name, f"iterations={iterations}", "objective=nft", "ema=0.999999", *extra))
        return metric_records(tmp_path / name, skip_first=True)

    control = run("control", 4, "lr=1e-12")
    slow = run("slow", 4, "lr=3e-3", "objective.sampler=ema")
    current = run("current", 4, "lr=3e-3")
    assert [r["reward/mean"] for r in slow] == pytest.approx([r["reward/mean"] for r in control], abs=1e-4)
    assert abs(current[-1]["reward/mean"] - control[-1]["reward/mean"]) > 1e-3  # the current weights' rollouts do move
    moved = load_file(str(tmp_path / "slow" / "checkpoint" / "trainable.safetensors"))
    still = load_file(str(tmp_path / "control" / "checkpoint" / "trainable.safetensors"))
    assert max((moved[k] - still[k]).abs().max().item() for k in moved) > 1e-3
    run("resumed", 2, "lr=3e-3", "objective.sampler=ema")
    resumed = run("resumed", 4, "lr=3e-3", "objective.sampler=ema")
    assert [r["loss/policy"] for r in resumed] == [r["loss/policy"] for r in slow]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.nft_beta=0"], "objective_options=.*nft_beta must be positive, got 0"),
        (["advantage_clip=0"], "config key advantage_clip=0.0: objective=nft reads advantages"),
        (["method=branch_grpo"], "config key objective='nft'.*branches.*use a chain method"),
        (["objective.weighting=equal"], "weighting='equal'.*adaptive.*uniform"),
        (["objective.sampler=ema", "ema=0"], "sampler='ema': ema samples with the moving average"),
        (["objective.sampler=ema", "objective=matching"], r"objective 'matching' has no option\(s\) \['sampler'\]"),
    ],
)
def test_bad_nft_settings_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config({}, ["objective=nft", *overrides])


def test_the_ramped_decay_is_the_papers_schedule():
    from flowrl.adapters import ramped_decay

    # DiffusionNFT's default [0.001, 0.5, 0]: 0.001 per optimizer step, held at 0.5 from step 500
    assert [ramped_decay(s, 0.001, 0.5, 0) for s in (0, 1, 250, 500, 4000)] == pytest.approx(
        [0.0, 0.001, 0.25, 0.5, 0.5]
    )
    # its OCR run [0.0075, 0.999, 75]: 0 for 75 steps, then 0.0075 per step up to 0.999 (step 208.2)
    assert [ramped_decay(s, 0.0075, 0.999, 75) for s in (0, 74, 75, 100, 200, 300)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.1875, 0.9375, 0.999]
    )


def test_the_old_sampler_is_its_own_ramped_average_and_resumes_exactly(tiny_dir, tmp_path):
    """objective.sampler=old: after each iteration old = d old + (1 - d) trained, d from the optimizer steps
    so far; the average is checkpointed, so a resumed run matches a straight one."""
    from safetensors.torch import load_file

    def run(name, iterations, *extra):
        train(
            tiny_run(
                tiny_dir,
                tmp_path / name,
                f"iterations={iterations}",
                "objective=nft",
                "objective.sampler=old",
                "lr=3e-3",
                *extra,
            )
        )
        state = torch.load(tmp_path / name / "checkpoint" / "state.pt", weights_only=False)
        return (
            metric_records(tmp_path / name, skip_first=True),
            state["nft_old"],
            load_file(str(tmp_path / name / "checkpoint" / "trainable.safetensors")),
        )

    from flowrl.policies.toy import load_toy

    initial = {k: v.detach() for k, v in load_toy(tiny_dir).transformer.named_parameters()}
    first, old1, w1 = run("b", 1, "objective.old_decay=[0.3,0.5,0]")
    assert set(old1) == set(w1) and first[0]["nft/sampler_decay"] == pytest.approx(0.3)
    for k in w1:  # one optimizer step: d = 0.3 x 1
        torch.testing.assert_close(old1[k], 0.3 * initial[k] + 0.7 * w1[k], rtol=1e-6, atol=1e-7)
    resumed, old2, w2 = run("b", 2, "objective.old_decay=[0.3,0.5,0]")
    assert resumed[1]["nft/sampler_decay"] == pytest.approx(0.5)  # min(0.3 x 2, 0.5)
    for k in w2:
        torch.testing.assert_close(old2[k], 0.5 * old1[k] + 0.5 * w2[k], rtol=1e-6, atol=1e-7)
    straight, old_straight, w_straight = run("a", 2, "objective.old_decay=[0.3,0.5,0]")
    assert [r["loss/policy"] for r in straight] == [r["loss/policy"] for r in resumed]
    assert all(torch.equal(w_straight[k], w2[k]) and torch.equal(old_straight[k], old2[k]) for k in w2)
    # The sampler is the average: one that does not move samples like an untrained control ...
    frozen, _, _ = run("frozen", 3, "objective.old_decay=[1.0,0.999999,0]")
    train(tiny_run(tiny_dir, tmp_path / "control", "iterations=3", "objective=nft", "lr=1e-12"))
    control = metric_records(tmp_path / "control", skip_first=True)
    assert [r["reward/mean"] for r in frozen] == pytest.approx([r["reward/mean"] for r in control], abs=1e-4)
    # ... and one with d = 0 is the current weights (objective.sampler=current) after every update.
    following, _, _ = run("following", 3, "objective.old_decay=[0,0,0]")
    train(tiny_run(tiny_dir, tmp_path / "current", "iterations=3", "objective=nft", "lr=3e-3"))
    current = metric_records(tmp_path / "current", skip_first=True)
    assert [r["reward/mean"] for r in following] == pytest.approx([r["reward/mean"] for r in current], abs=1e-5)
    assert [r["loss/policy"] for r in following] == pytest.approx([r["loss/policy"] for r in current], rel=1e-4)
    assert abs(following[-1]["reward/mean"] - frozen[-1]["reward/mean"]) > 1e-3


def test_resuming_without_the_old_average_is_refused(tiny_dir, tmp_path):
    train(tiny_run(tiny_dir, tmp_path / "run", "iterations=1", "objective=nft"))
    with pytest.raises(ValueError, match="has no objective.sampler=old average to resume"):
        train(tiny_run(tiny_dir, tmp_path / "run", "iterations=2", "objective=nft", "objective.sampler=old"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.sampler=old", "objective=matching"], r"objective 'matching' has no option\(s\) \['sampler'\]"),
        (["objective.old_decay=[0.001,0.5]"], r"old_decay=\[0.001, 0.5\]: expected three numbers \[rate, max, flat\]"),
        (["objective.old_decay=[0.001,1.0,0]"], "expected rate >= 0, 0 <= max < 1 and flat >= 0"),
        (["objective.old_decay=[-0.1,0.5,0]"], "expected rate >= 0"),
    ],
)
def test_bad_old_sampler_settings_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config({}, ["objective=nft", *overrides])
