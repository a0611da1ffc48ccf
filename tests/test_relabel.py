"""relabel: which foreign samples each prompt takes (positives, then hardest negatives), the
advantages of the union by hand, and the trainer running on the pairs."""

import json

import numpy as np
import pytest
import torch

from flowrl.config import build_config
from flowrl.policies.toy import load_toy
from flowrl.relabel import relabel_pairs
from flowrl.trainer import train

from test_trainer import tiny_dir, tiny_run  # noqa: F401 (the module fixture)


def by_hand(rewards: list[float]) -> list[float]:
    values = np.array(rewards)
    return list((values - values.mean()) / (values.std() + 1e-4))  # GRPO: population std, eps 1e-4


def test_each_prompt_takes_its_foreign_positives_then_its_hardest_negatives():
    sample_prompt = torch.tensor([0, 0, 1, 1, 2, 2])
    correct = torch.tensor([
        [1, 0, 0, 1, 0, 0],  # prompt 0: sample 3 (drawn for prompt 1) satisfies it too
        [0, 0, 0, 0, 0, 0],  # prompt 1: nothing satisfies it, its own samples included
        [0, 0, 0, 0, 1, 1],  # prompt 2: both its own samples, no foreign one
    ], dtype=torch.bool)
    score = torch.tensor([
        [1.0, 0.2, 0.9, 1.0, 0.5, 0.1],
        [0.3, 0.8, 0.4, 0.6, 0.7, 0.1],
        [0.2, 0.6, 0.3, 0.1, 1.0, 1.0],
    ])
    pairs = relabel_pairs(sample_prompt, correct.float(), score, correct, per_prompt=2, generator=torch.Generator().manual_seed(0))
    members = {p: pairs.sample[pairs.prompt == p].tolist() for p in range(3)}
    assert members[0] == [0, 1, 3, 2]  # own; the positive 3; then the best-scored negative, 2 (0.9)
    assert members[1] == [2, 3, 1, 4]  # own; no positive; the two best-scored negatives, 1 (0.8) and 4 (0.7)
    assert members[2] == [4, 5, 1, 2]  # own; negatives 1 (0.6) and 2 (0.3)
    assert pairs.foreign.tolist() == [False, False, True, True] * 3
    expected = by_hand([1, 0, 1, 0]) + [0.0] * 4 + by_hand([1, 1, 0, 0])  # prompt 1's group ties: no signal
    assert pairs.advantage.tolist() == pytest.approx(expected, abs=1e-6)
    assert pairs.reward.tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    only = relabel_pairs(sample_prompt, correct.float(), score, correct, 2, torch.Generator().manual_seed(0), with_negatives=False)
    assert only.sample.tolist() == [0, 1, 3, 2, 3, 4, 5]  # prompt 0 gains its positive 3; the others nothing
    assert only.advantage.tolist() == pytest.approx(by_hand([1, 0, 1]) + [0.0, 0.0] + [0.0, 0.0], abs=1e-6)


def test_positives_are_capped_and_drawn_at_random():
    sample_prompt = torch.tensor([0, 1, 1, 1, 1, 1])
    correct = torch.zeros(2, 6, dtype=torch.bool)
    correct[0, 1:] = True  # all five foreign samples satisfy prompt 0
    picks = set()
    for seed in range(20):
        pairs = relabel_pairs(sample_prompt, correct.float(), correct.float(), correct, 2, torch.Generator().manual_seed(seed))
        chosen = pairs.sample[(pairs.prompt == 0) & pairs.foreign].tolist()
        assert len(chosen) == 2 and all(s in range(1, 6) for s in chosen)
        picks.add(tuple(sorted(chosen)))
    assert len(picks) > 3  # not always the same two


def test_without_foreign_samples_it_is_grpo_over_each_prompts_own_group():
    g = torch.Generator().manual_seed(1)
    sample_prompt = torch.tensor([0, 0, 0, 1, 1, 1])
    reward = torch.rand(2, 6, generator=g)
    pairs = relabel_pairs(sample_prompt, reward, reward, reward > 0.5, 0, g)
    assert not pairs.foreign.any()
    own = reward[sample_prompt, torch.arange(6)]
    assert pairs.advantage.tolist() == pytest.approx(by_hand(own[:3].tolist()) + by_hand(own[3:].tolist()), abs=1e-6)


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"sample_prompt has shape \(5,\), expected \(6,\)"):
        relabel_pairs(torch.zeros(5, dtype=torch.long), torch.zeros(2, 6), torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.bool), 1, torch.Generator())
    with pytest.raises(ValueError, match="per_prompt must be >= 0, got -1"):
        relabel_pairs(torch.zeros(6, dtype=torch.long), torch.zeros(2, 6), torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.bool), -1, torch.Generator())


@pytest.mark.parametrize("objective", ["matching", "nft"])
def test_a_relabelled_run_trains_on_foreign_pairs(tiny_dir, tmp_path, objective):
    # the shipped model: its samples score partially under ToyShapes prompts, a random one's score 0
    config = tiny_run(tiny_dir, tmp_path / "run", "policy=toy", "reward=toyshapes", f"objective={objective}", "relabel=2", "prompts_per_iteration=3")
    train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in records[1:]:
        live = round(record["relabel/live_prompts"] * 3)  # prompts whose union of samples does not tie
        assert live >= 1
        assert record["relabel/foreign_pairs"] == 2 * live
        steps = record["transitions/trained"] / (live * (3 + 2))  # own 3 + foreign 2 samples, at each one's trained steps
        assert steps == int(steps) and steps >= 1
        assert np.isfinite(record["loss/total"])
    before = load_toy().transformer.state_dict()  # the shipped weights
    after = load_toy(tmp_path / "run" / "final").transformer.state_dict()
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)


@pytest.mark.parametrize("overrides, message", [
    (["relabel=2"], "relabel.*needs objective=matching or nft, not 'sde'"),
    (["relabel=2", "objective=matching", "reward=pickscore"], "relabel.*needs reward=toyshapes or toyshapes_binary, not 'pickscore'"),
    (["relabel=-1", "objective=matching"], "relabel.*must be >= 0"),
])
def test_bad_relabel_settings_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config({}, overrides)
