"""objective=disco against DisCO's objective written out by hand (arXiv 2505.12366 and its verl
code): scores, the soft maximum over wrong completions, the KL hinge, and whole-group batching."""

import math

import pytest
import torch

from conftest import metric_records
from flowrl.config import build_config
from flowrl.experience import Batch
from flowrl.llm.policy import Completions
from flowrl.llm.rewards import TEXT_REWARDS, register_text_reward
from flowrl.llm.tiny import save_tiny
from flowrl.objectives import OBJECTIVES
from flowrl.objectives.base import ObjectiveContext
from flowrl.objectives.disco import DiscoObjective, DiscoOptions
from flowrl.trainer import train

MASK = torch.tensor(
    [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]],
    dtype=torch.bool,
)
OLD = torch.tensor(
    [
        [-1.0, -2.0, -0.5, 0.0],
        [-0.3, 0.0, 0.0, 0.0],
        [-1.5, -0.2, -0.7, -1.1],
        [-0.4, -0.9, 0.0, 0.0],
        [-2.0, -0.1, -0.6, 0.0],
    ]
)
SHIFT = torch.tensor(
    [
        [0.1, -0.3, 0.02, 0.0],
        [0.5, 0.0, 0.0, 0.0],
        [-0.05, 0.25, 0.0, -0.4],
        [0.2, -0.1, 0.0, 0.0],
        [0.0, 0.3, -0.2, 0.0],
    ]
)
PROMPTS = torch.tensor([0, 0, 0, 1, 1])  # group 0: right, wrong, wrong; group 1: both right (tied)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])


def disco_batch(rewards=REWARDS, prompts=PROMPTS, **options):
    completions = Completions(
        torch.zeros(5, 6, dtype=torch.long),
        torch.ones(5, 6, dtype=torch.long),
        MASK,
        OLD * MASK,
        torch.zeros(5, dtype=torch.bool),
        prompts,
        list("abcde"),
    )
    keep = torch.ones(5, dtype=torch.bool)
    batch = Batch(0, completions, ["p", "q"], None, torch.arange(2), rewards, keep, completions, torch.zeros(5),
                  torch.ones(5), {})  # fmt: skip
    context = ObjectiveContext({}, None, None, 0.0, "clip", 5.0, 64, 64, (), lambda i, r: [])
    objective = DiscoObjective(DiscoOptions(**options), context)
    objective.prepare(batch)
    return objective, batch


def token_mean(values, i):
    return sum(values[i][t] for t in range(4) if MASK[i, t]) / int(MASK[i].sum())


@pytest.mark.parametrize("score", ["log_l", "l_ratio"])
def test_the_loss_is_disco_s_objective_with_its_kl_hinge(score):
    new = (OLD + SHIFT) * MASK
    objective, batch = disco_batch(score=score, delta=1e-4, beta=1e3)
    loss, stats = objective.loss(lambda part: new[: len(part)], batch, torch.arange(5), 5.0)
    tau = 10.0 if score == "log_l" else 1.0  # the paper's defaults per score
    ratio = [[math.exp(float(new[i, t] - OLD[i, t])) for t in range(4)] for i in range(5)]
    logp = [[float(new[i, t]) for t in range(4)] for i in range(5)]
    s = [token_mean(logp if score == "log_l" else ratio, i) for i in range(5)]
    # group 0 has one right and two wrong completions; group 1 is tied and carries no term
    objective_value = s[0] - tau * math.log(math.exp(s[1] / tau) + math.exp(s[2] / tau))
    tokens = [(i, t) for i in range(5) for t in range(4) if MASK[i, t]]
    kl = sum(ratio[i][t] - 1 - math.log(ratio[i][t]) for i, t in tokens) / len(tokens)  # KL(old || new), k3
    expected = -objective_value / 2 + max(1e3 * (kl - 1e-4), 0.0) * kl  # 2 prompts in the step
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["disco/kl"] == pytest.approx(kl, rel=1e-5) and stats["disco/constraint_active"] == 1.0


def test_the_gradient_on_wrong_completions_is_the_softmax_of_their_scores():
    logp = ((OLD + SHIFT) * MASK).requires_grad_(True)
    objective, batch = disco_batch(beta=0.0, tau=0.5)
    loss, _ = objective.loss(lambda part: logp[: len(part)], batch, torch.arange(5), 5.0)
    loss.backward()
    s = [token_mean(logp.detach().tolist(), i) for i in (1, 2)]
    weights = [math.exp(v / 0.5) / sum(math.exp(u / 0.5) for u in s) for v in s]
    # d loss / d logp[i, t] = softmax weight / (2 prompts * the completion's length) for wrong i
    assert float(logp.grad[1, 0]) == pytest.approx(weights[0] / (2 * 1), rel=1e-5)
    assert float(logp.grad[2, 3]) == pytest.approx(weights[1] / (2 * 4), rel=1e-5)
    assert float(logp.grad[0, 1]) == pytest.approx(-1 / (2 * 3), rel=1e-5)  # the right one: its mean, raised
    assert float(logp.grad[3].abs().sum()) == 0.0  # the tied group


def test_disco_b_takes_the_wrong_completions_mean():
    new = (OLD + SHIFT) * MASK
    objective, batch = disco_batch(negatives="mean", beta=0.0)
    loss, _ = objective.loss(lambda part: new[: len(part)], batch, torch.arange(5), 5.0)
    s = [token_mean(new.tolist(), i) for i in range(3)]
    assert loss.item() == pytest.approx(-(s[0] - (s[1] + s[2]) / 2) / 2, rel=1e-5)


def test_graded_rewards_are_refused_with_the_values_named():
    with pytest.raises(ValueError, match=r"rewards of 0 or 1.*0\.5"):
        disco_batch(rewards=torch.tensor([1.0, 0.5, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="score must be one of"):
        DiscoOptions(score="logl")


def test_steps_and_micro_batches_hold_whole_groups():
    prompts = torch.tensor([2, 2, 0, 0, 0, 1, 1, 3, 3, 3, 3])
    completions = Completions(
        torch.zeros(11, 2, dtype=torch.long), torch.ones(11, 2, dtype=torch.long), torch.ones(11, 2, dtype=torch.bool),
        torch.zeros(11, 2), torch.zeros(11, dtype=torch.bool), prompts, ["x"] * 11,
    )  # fmt: skip
    batch = Batch(0, completions, [], None, torch.arange(4), torch.zeros(11), torch.ones(11, dtype=torch.bool),
                  completions, torch.zeros(11), torch.ones(11), {})  # fmt: skip
    objective = DiscoObjective(DiscoOptions(), None)
    order = objective.order(batch, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(11))
    runs = [prompts[order].tolist()[i] for i in range(11)]
    assert all(
        len(set(runs[i : i + n])) == 1 for i, n in [(runs.index(g), int((prompts == g).sum())) for g in range(4)]
    )
    micros = objective.micro_batches(batch, order, 5)
    assert torch.equal(torch.cat(micros), order)
    for micro in micros:  # whole groups, at most 5 rows unless one group alone is larger
        members = prompts[micro]
        assert all(int((members == g).sum()) == int((prompts == g).sum()) for g in members.unique())
        assert len(micro) <= 5 or len(members.unique()) == 1


def test_a_text_run_trains_with_disco(tmp_path):
    lm = str(save_tiny(tmp_path / "lm"))
    assert "disco" in OBJECTIVES

    @register_text_reward("test_even_length")
    def even_length(prompts, completions, **kwargs):
        return [float(len(c) % 2 == 0) for c in completions]

    config = dict(
        out=str(tmp_path / "run"), policy=lm, method="grpo", objective="disco", prompts="task:add2x1",
        reward="test_even_length", iterations=2, prompts_per_iteration=4, lr=1e-3, eval_every=0, micro_batch=6,
        method_options={"num_generations": 4, "temperature": 3.0, "max_completion_length": 3}, minutes=0, threads=1,
    )  # fmt: skip
    try:
        train(build_config(config))
    finally:
        TEXT_REWARDS.unregister("test_even_length")
    records = metric_records(tmp_path / "run", skip_first=True)
    assert len(records) == 2 and all(math.isfinite(r["loss/total"]) for r in records)
    assert all(r["consistency/max_abs_logp_diff"] == 0.0 for r in records)
    assert records[-1]["transitions/trained"] > 0 and any(r["loss/policy"] != 0 for r in records)
