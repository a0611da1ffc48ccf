"""Every method: its plan against the paper's description, and its credit rule against a
brute-force recomputation over the rollout tree."""

import math
import subprocess
import sys

import pytest
import torch

from conftest import MISSION, SMALL
from flowrl.advantage import assign_credit, grpo
from flowrl.samplers.methods import METHODS, get_method
from flowrl.samplers.rollout import rollout


def velocity(x, sigma, prompt):
    return 0.5 * x + 0.2 * prompt.view(-1, *[1] * (x.ndim - 1)).float()


def run(name, seed=0):
    method = get_method(name)
    config = method.configure(**SMALL[name])
    plan = method.plan(config)
    result = rollout(velocity, plan, num_prompts=2, sample_shape=(2, 3, 3), seed=seed)
    rewards = result.samples.flatten(1).mean(1) ** 2  # any deterministic function of the image
    return method, config, result, rewards, assign_credit(method, result, rewards, config)


def leaves_below(result):
    """{node: set of samples whose path from the root passes through node}, by walking up."""
    below = {}
    for sample, node in enumerate(result.sample_node.tolist()):
        while node >= 0:
            below.setdefault(node, set()).add(sample)
            node = int(result.node_parent[node])
    return below


def test_every_mission_method_is_registered_with_a_paper():
    assert set(MISSION) <= set(METHODS)
    for name in MISSION:
        assert "arXiv" in METHODS[name].paper and METHODS[name].description


def test_configure_rejects_unknown_options_by_name():
    with pytest.raises(ValueError, match=r"no option\(s\) \['windw'\].*window"):
        get_method("mix_grpo").configure(windw=3)
    with pytest.raises(ValueError, match="unknown method 'grpo_x'"):
        get_method("grpo_x")


def test_flow_grpo_trains_the_first_nine_of_ten_steps():
    plan = get_method("flow_grpo").plan()
    assert plan.num_steps == 10 and [i for i, s in enumerate(plan.steps) if s.trained] == list(range(9))
    assert all(s.mode == "sde" and s.sde == "flow_grpo" and s.level() == 0.7 for s in plan.steps)


def test_mix_grpo_window_slides_every_interval_and_clamps_when_asked():
    # window_end=clamp: the start stops at num_steps - window (the default rolls back: test_fidelity.py)
    method = get_method("mix_grpo")
    config = method.configure(num_steps=25, window=4, stride=1, interval=25, window_end="clamp")
    for iteration, start in [(0, 0), (24, 0), (25, 1), (260, 10), (10_000, 21)]:
        plan = method.plan(config, iteration)
        sde = [i for i, s in enumerate(plan.steps) if s.mode == "sde"]
        assert sde == list(range(start, start + 4)) == [i for i, s in enumerate(plan.steps) if s.trained]


def test_tempflow_weights_follow_the_transition_std():
    method = get_method("tempflow_grpo")
    config = method.configure(num_steps=10, probes=2)
    plan = method.plan(config)
    sigmas = plan.sigmas.double()
    # sigma_i * sqrt(-d_i) with sigma_i = a sqrt(t/(1-t)); compare ratios away from t = 1
    # (the last step is not probed: TempFlow-GRPO's code probes steps 0 to N - 2)
    std = [0.7 * math.sqrt(sigmas[i] / (1 - sigmas[i])) * math.sqrt(sigmas[i] - sigmas[i + 1]) for i in range(1, 9)]
    weights = [plan.steps[i].weight for i in range(1, 9)]
    for i in range(1, 8):
        assert weights[i] / weights[0] == pytest.approx(std[i] / std[0], rel=1e-5)
    assert sum(plan.steps[i].weight for i in range(9)) / 9 == pytest.approx(1.0, rel=1e-6)
    assert plan.steps[9].probes == 0


@pytest.mark.parametrize("name", MISSION)
def test_credit_is_finite_and_only_on_trained_transitions(name):
    _, _, result, _, credit = run(name)
    transitions = result.transitions
    assert credit.advantages.shape == credit.mask.shape == (len(transitions),)
    assert bool(torch.isfinite(credit.advantages).all())
    assert not bool((credit.mask & ~transitions.trained).any())
    assert bool(credit.mask.any())


@pytest.mark.parametrize("name", ["flow_grpo", "dance_grpo", "mix_grpo", "mix_grpo_flash"])
def test_chain_credit_is_the_group_advantage_of_the_chain_leaf(name):
    _, config, result, rewards, credit = run(name)
    # The papers' std scopes: Flow-GRPO's std over the whole batch, the others' over the group.
    scope = config.std_scope or ("batch" if name == "flow_grpo" else "group")
    expected = grpo(rewards, result.prompt, std_scope=scope)
    below = leaves_below(result)
    for k, child in enumerate(result.transitions.child.tolist()):
        (sample,) = below[child]
        assert credit.advantages[k].item() == pytest.approx(expected[sample].item(), abs=1e-5)


@pytest.mark.parametrize("name", ["branch_grpo", "tree_rpo"])
def test_tree_credit_matches_brute_force_depthwise_z_scores(name):
    _, config, result, rewards, credit = run(name)
    below = leaves_below(result)
    value = {node: sum(rewards[s].item() for s in leaves) / len(leaves) for node, leaves in below.items()}
    min_std = getattr(config, "min_std", 0.0)
    for k, child in enumerate(result.transitions.child.tolist()):
        depth, prompt = int(result.node_index[child]), int(result.node_prompt[child])
        mates = [value[n] for n in value if int(result.node_index[n]) == depth and int(result.node_prompt[n]) == prompt]
        mean = sum(mates) / len(mates)
        std = math.sqrt(sum((v - mean) ** 2 for v in mates) / (len(mates) - config.unbiased))
        expected = 0.0 if std <= min_std else (value[child] - mean) / (std + config.eps)
        assert credit.advantages[k].item() == pytest.approx(expected, abs=1e-4)


def test_probe_credit_z_scores_probes_of_one_spine_node():
    _, _, result, rewards, credit = run("tempflow_grpo")
    probe_reward = {int(p): rewards[s].item() for s, p in enumerate(result.probe.tolist()) if p >= 0}
    for k, child in enumerate(result.transitions.child.tolist()):
        if child not in probe_reward:
            assert not bool(credit.mask[k])
            continue
        siblings = [
            probe_reward[p] for p in probe_reward if int(result.node_parent[p]) == int(result.node_parent[child])
        ]
        mean = sum(siblings) / len(siblings)
        std = math.sqrt(sum((v - mean) ** 2 for v in siblings) / len(siblings))
        assert credit.advantages[k].item() == pytest.approx((probe_reward[child] - mean) / (std + 1e-4), abs=1e-4)


def test_g2rpo_sums_the_z_scores_of_each_granularity():
    _, config, result, rewards, credit = run("g2rpo")
    for k, child in enumerate(result.transitions.child.tolist()):
        if not bool(credit.mask[k]):
            continue
        siblings = {
            int(p)
            for p in result.probe.tolist()
            if p >= 0 and int(result.node_parent[p]) == int(result.node_parent[child])
        }
        total = 0.0
        for tail in range(len(config.tail_strides)):
            scores = {
                int(result.probe[s]): rewards[s].item()
                for s in range(len(rewards))
                if int(result.tail[s]) == tail and int(result.probe[s]) in siblings
            }
            mean = sum(scores.values()) / len(scores)
            std = math.sqrt(sum((v - mean) ** 2 for v in scores.values()) / (len(scores) - config.unbiased))
            total += (scores[child] - mean) / (std + config.eps)
        assert credit.advantages[k].item() == pytest.approx(total, abs=1e-4)


def test_flowrl_methods_lists_every_method():
    out = subprocess.run([sys.executable, "-m", "flowrl", "methods"], capture_output=True, text=True, check=True).stdout
    for name in MISSION:
        assert name in out


def test_flowrl_methods_verbose_shows_the_sde_forms_and_grpo_guard():
    out = subprocess.run(
        [sys.executable, "-m", "flowrl", "methods", "-v"], capture_output=True, text=True, check=True
    ).stdout
    assert "cps (noise level 0.8)" in out and "guard=False" in out and "guard_reweight=True" in out
    assert "split_noise='scaled'" in out and "tail_schedule='lead'" in out
