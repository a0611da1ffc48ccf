"""objective=matching (Advantage Weighted Matching): flow-matching points from chain rollouts,
their log-likelihood proxy against closed forms, and the trainer running on it."""

import math

import numpy as np
import pytest
import torch

from conftest import metric_records, tiny_model, tiny_run
from flowrl.config import build_config
from flowrl.samplers.matching import MatchingPoints, matching_points, score_matching, transition_samples
from flowrl.samplers.methods import get_method
from flowrl.samplers.plan import Plan, StepSpec
from flowrl.samplers.rollout import rollout
from flowrl.trainer import train

SHAPE = (2, 3)


def linear_velocity(x, sigma, prompt):
    view = (-1,) + (1,) * (x.ndim - 1)
    return 0.3 * x - 0.2 * sigma.to(x).view(view) + 0.1 * prompt.to(x).view(view)


def test_score_matching_is_minus_the_mean_squared_flow_matching_error():
    g = torch.Generator().manual_seed(0)
    points = MatchingPoints(
        torch.randn(5, *SHAPE, generator=g),
        torch.randn(5, *SHAPE, generator=g),
        torch.tensor([0.9, 0.5, 0.3, 0.1, 0.7]),
        torch.tensor([0, 1, 1, 0, 2]),
    )
    scored = score_matching(linear_velocity, points, max_batch=2)  # chunked calls: same values
    # by hand in float64: x_t = (1 - s) x0 + s eps, target eps - x0
    x0, eps, s, p = (
        points.x0.double().numpy(),
        points.noise.double().numpy(),
        points.sigma.double().numpy(),
        points.prompt.double().numpy(),
    )
    expected = []
    for i in range(5):
        x_t = (1 - s[i]) * x0[i] + s[i] * eps[i]
        v = 0.3 * x_t - 0.2 * s[i] + 0.1 * p[i]
        expected.append(-np.mean((v - (eps[i] - x0[i])) ** 2))
    assert scored.logp.double().numpy() == pytest.approx(np.array(expected), rel=1e-5)
    assert scored.velocity.shape == (5, *SHAPE)


def test_the_exact_velocity_of_a_point_mass_scores_zero():
    # Data = one point c: the flow-matching velocity is (x_t - c) / sigma = eps - c exactly.
    c = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])

    def velocity(x, sigma, prompt):
        return (x - c) / sigma.view(-1, 1, 1)

    noise = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    points = MatchingPoints(
        c.expand(4, *SHAPE), noise, torch.tensor([1.0, 0.6, 0.25, 0.05]), torch.zeros(4, dtype=torch.long)
    )
    assert score_matching(velocity, points).logp.abs().max() < 1e-10
    # ...and any other sample scores below it, by its squared distance to c over sigma
    moved = MatchingPoints(points.x0 + 0.1, noise, points.sigma, points.prompt)
    expected = -((0.1 * (1 - points.sigma) / points.sigma + 0.1) ** 2)
    assert score_matching(velocity, moved).logp == pytest.approx(expected, rel=1e-5)


def test_each_transition_of_a_chain_leads_to_its_own_chains_sample():
    steps = 5
    plan = Plan(
        torch.linspace(1, 0, steps + 1), tuple(StepSpec(mode="sde", trained=True) for _ in range(steps)), group_size=3
    )
    result = rollout(linear_velocity, plan, 2, SHAPE, seed=2)
    t = result.transitions
    samples = transition_samples(result, t)
    assert len(t) == 2 * 3 * steps
    last = t.step == steps - 1  # the last SDE step lands on the chain's final sample
    assert torch.equal(t.x_next[last], result.samples[samples[last]])
    # every transition of a chain points at the same sample as that chain's last transition
    for child in range(len(t)):
        same_chain = result.node_root[t.child] == result.node_root[t.child[child]]
        assert set(samples[same_chain].tolist()) == {int(samples[child])}
    assert torch.equal(result.prompt[samples], t.prompt)

    noise = torch.randn(len(t), *SHAPE)
    points = matching_points(result, t, noise)
    assert (
        torch.equal(points.x0, result.samples[samples])
        and torch.equal(points.sigma, t.sigma)
        and torch.equal(points.noise, noise)
    )


@pytest.mark.parametrize("method", ["branch_grpo", "tempflow_grpo"])
def test_branching_methods_are_refused_by_name(method):
    plan = get_method(method).plan()
    result = rollout(linear_velocity, plan, 1, SHAPE, seed=3)
    with pytest.raises(ValueError, match=f"method '{method}' branches"):
        transition_samples(result, result.transitions)
    with pytest.raises(ValueError, match="config key objective='matching'.*branches.*use a chain method"):
        build_config({}, [f"method={method}", "objective=matching"])


def test_a_matching_run_trains_resumes_exactly_and_scores_each_point_once(tiny_dir, tmp_path):
    def run(name, iterations, *extra):
        train(tiny_run(tiny_dir, tmp_path / name, f"iterations={iterations}", "objective=matching", *extra))
        return metric_records(tmp_path / name, skip_first=True)

    straight = run("a", 3)
    run("b", 2)
    resumed = run("b", 3)
    a = torch.load(tmp_path / "a" / "checkpoint" / "state.pt", weights_only=False)
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / d / "checkpoint" / "trainable.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and a["iteration"] == 3
    assert [r["reward/mean"] for r in straight] == [r["reward/mean"] for r in resumed]
    assert all(r["ratio/mean"] == pytest.approx(1.0, abs=1e-6) for r in straight)  # one step: old = new
    before = tiny_model().transformer.state_dict()
    from flowrl.policies.toy import load_toy

    after = load_toy(tmp_path / "a" / "final").transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # Several optimizer steps: later steps see moved weights, so their ratios leave 1 and clip.
    several = run("c", 1, "train_batch=4", "inner_epochs=2", "objective.clip_low=1e-4", "objective.clip_high=1e-4")
    assert several[0]["ratio/max"] > 1 + 1e-4 or several[0]["ratio/min"] < 1 - 1e-4
    assert several[0]["clip_fraction"] > 0


def test_matching_raises_a_learnable_reward_over_an_untrained_control(tiny_dir, tmp_path):
    def rewards(name, lr):
        config = tiny_run(
            tiny_dir,
            tmp_path / name,
            "iterations=12",
            "method.group_size=4",
            f"lr={lr}",
            "checkpoint_every=100",
            "objective=matching",
        )
        train(config)
        return [r["reward/mean"] for r in metric_records(tmp_path / name, skip_first=True)]

    control, trained = rewards("control", 1e-12), rewards("trained", 3e-3)
    assert control[0] == pytest.approx(trained[0])
    assert max(control) - min(control) < 0.03
    assert sum(trained[-4:]) / 4 > sum(control[-4:]) / 4 + 0.05


def constant_reward(images, prompts):
    """Every sample ties: each group has zero variance, so nothing is kept for the update."""
    return torch.full((len(images),), 0.5)


def test_an_iteration_whose_groups_all_tie_skips_the_update(tiny_dir, tmp_path):
    # A collapsed model gives every sample the same reward; the matching points are then empty.
    train(tiny_run(tiny_dir, tmp_path / "tie", "objective=matching", "reward=test_matching:constant_reward"))
    records = metric_records(tmp_path / "tie", skip_first=True)
    assert len(records) == 2
    assert all(r["transitions/trained"] == 0 and r.get("skipped_update") == 1.0 for r in records)
    from flowrl.policies.toy import load_toy

    before, after = (load_toy(d).transformer.state_dict() for d in (tiny_dir, tmp_path / "tie" / "final"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


@pytest.mark.parametrize("objective", ["matching", "nft"])
def test_deterministic_rollouts_train_the_matching_objectives(tiny_dir, tmp_path, objective):
    # Noise level 0: the rollouts are the Euler sampler's (as AWM and DiffusionNFT sample), the
    # trained steps still set the noise levels the points are drawn at.
    def run(name, *extra):
        train(tiny_run(tiny_dir, tmp_path / name, f"objective={objective}", "method.share_noise=false", *extra))
        return metric_records(tmp_path / name, skip_first=True)

    flow = run("flow", "method.noise_level=0")
    assert all(r["transitions/trained"] > 0 and math.isfinite(r["loss/total"]) for r in flow)
    from flowrl.policies.toy import load_toy

    before, after = (load_toy(d).transformer.state_dict() for d in (tiny_dir, tmp_path / "flow" / "final"))
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)
    # Other chain methods at zero noise draw the same first images on the same grid (the same Euler
    # chains from the same starting noise, whatever steps they mark as trained); any noise would change them.
    dance = run("dance", "method=dance_grpo", "method.eta=0", "method.grid=scheduler")
    mix = run("mix", "method=mix_grpo", "method.noise_level=0", "method.window=2", "method.grid=scheduler")
    noisy = run("noisy", "method.noise_level=0.3")
    assert flow[0]["reward/mean"] == dance[0]["reward/mean"] == mix[0]["reward/mean"] != noisy[0]["reward/mean"]
    # Another deterministic solver (DiffusionNFT's DPM-Solver 2M) draws other images and trains the same steps.
    dpm = run("dpm", "method.noise_level=0", "method.solver=dpmpp_2m")
    assert dpm[0]["reward/mean"] != flow[0]["reward/mean"]
    assert [r["transitions/trained"] for r in dpm] == [r["transitions/trained"] for r in flow] and all(
        math.isfinite(r["loss/total"]) for r in dpm
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["method.noise_level=0"],
            r"config key method_options=.*noise level 0 makes the trained steps \[0, 1, 2, 3, 4, 5, 6, 7, 8\] of the flow_grpo plan "
            "deterministic.*objective=sde trains their log-probability.*use objective=matching or objective=nft",
        ),
        (
            ["objective=matching", "method=dance_grpo", "method.eta=0"],
            "the dance_grpo plan's 12 samples of a prompt would be identical.*set method.share_noise=false",
        ),
        (
            ["objective=matching", "method.noise_level=-0.1"],
            r"method 'flow_grpo': noise_level must be >= 0 \(0: deterministic ODE steps",
        ),
        (
            ["objective=matching", "method.solver=dpmpp_2m"],
            "solver='dpmpp_2m' applies to deterministic rollouts \\(noise_level=0\\); with noise_level=0.7 every step is an SDE step",
        ),
        (["objective=matching", "method.noise_level=0", "method.solver=rk4"], "unknown ODE solver 'rk4'"),
        (["objective=matching", "method=branch_grpo", "method.eta=0"], "eta must be positive"),
    ],
)
def test_zero_noise_settings_that_cannot_train_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config({}, overrides)
