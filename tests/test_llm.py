"""The text side (flowrl.llm): completions, rewards with TRL's signature, the tokens objective's
loss types written out by hand, and text runs through the one trainer loop."""

import json
import math

import pytest
import torch

from conftest import metric_records, same_checkpoint_weights
from flowrl.config import build_config
from flowrl.experience import Batch
from flowrl.llm.policy import Completions, completion_mask, is_text_source, load_text_policy
from flowrl.llm.prompts import TextPrompts
from flowrl.llm.rewards import TEXT_REWARDS, TextRewardSet, boxed, last_number, register_text_reward
from flowrl.llm.task import ArithmeticTask
from flowrl.llm.tiny import build_tokenizer, save_tiny
from flowrl.objectives.base import ObjectiveContext
from flowrl.objectives.tokens import TokenObjective, TokenOptions
from flowrl.trainer import train


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> str:
    return str(save_tiny(tmp_path_factory.mktemp("lm") / "tiny"))


def text_run(lm_dir, out, *overrides):
    values = dict(
        out=str(out),
        policy=lm_dir,
        method="grpo",
        objective="tokens",
        prompts="task:add2x2",
        reward="length",
        reward_options={"length": {"target": 2}},
        iterations=2,
        prompts_per_iteration=4,
        lr=1e-3,
        eval_every=2,
        lora_rank=0,
        ema=0,
        checkpoint_every=1,
        method_options=dict(num_generations=4, max_completion_length=4, eval_size=8),
    )
    return build_config(values, list(overrides))


def test_the_tokenizer_is_one_token_per_character_and_round_trips():
    tokenizer = build_tokenizer()
    ids = tokenizer("12*34=")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 7
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12*34="


def test_completion_masks_stop_after_the_first_eos_and_flag_truncation():
    eos = 2
    completion = torch.tensor([[5, 6, eos, 0], [5, 5, 5, 5], [eos, 7, eos, 0]])
    mask, truncated = completion_mask(completion, eos)
    assert mask.tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False]]
    assert truncated.tolist() == [False, True, False]


def test_sampled_log_probs_are_the_update_s_and_sampling_is_reproducible(lm_dir):
    policy = load_text_policy(lm_dir)
    a = policy.sample(["12+34=", "5+6="], 3, max_new_tokens=5, seed=7)
    b = policy.sample(["12+34=", "5+6="], 3, max_new_tokens=5, seed=7)
    assert torch.equal(a.ids, b.ids) and a.texts == b.texts
    assert a.prompt.tolist() == [0, 0, 0, 1, 1, 1]
    again = policy.token_logps(a)
    assert torch.equal(again, a.logp) and bool((a.logp[~a.mask] == 0).all())
    # the log-probs at temperature 1 are log-softmax of the model's logits at those positions, by hand
    row = 0
    ids, attention = a.ids[row : row + 1], a.attention[row : row + 1]
    logits = policy.network(
        input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp_min(0)
    ).logits[0]
    start = a.prompt_length
    for t in range(int(a.mask[row].sum())):
        expected = torch.log_softmax(logits[start + t - 1], -1)[ids[0, start + t]]
        assert a.logp[row, t].item() == pytest.approx(expected.item(), abs=1e-5)


def test_answer_extractors_and_a_trl_style_reward_with_columns_and_none():
    assert last_number("so 12 and then 345.") == "345" and last_number("none") is None
    assert boxed(r"x \boxed{42} and \boxed{ 7 }") == "7"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    rewards = TextRewardSet("exact_match")
    values, means = rewards(rows, ["2", "5"])
    assert values == [1.0, 0.0] and means["reward/exact_match/mean"] == 0.5

    @register_text_reward("test_half_missing")
    def half(prompts, completions, answer, **kwargs):
        return [None if i % 2 else float(len(c)) for i, c in enumerate(completions)]

    try:
        values, _ = TextRewardSet("test_half_missing")(rows, ["abc", "de"])
        assert values[0] == 3.0 and math.isnan(values[1])
    finally:
        TEXT_REWARDS.unregister("test_half_missing")


def test_async_rewards_are_awaited():
    async def reward(prompts, completions, **kwargs):
        return [1.0 for _ in completions]

    import sys
    import types

    module = types.ModuleType("async_reward_module")
    module.reward = reward
    sys.modules["async_reward_module"] = module
    try:
        values, _ = TextRewardSet("async_reward_module:reward")([{"prompt": "p"}], ["x"])
        assert values == [1.0]
    finally:
        del sys.modules["async_reward_module"]


def test_task_prompts_never_draw_held_out_ones():
    task = ArithmeticTask("mul2x1")
    held = {row["prompt"] for row in task.held_out()}
    source = TextPrompts("task:mul2x1", seed=3)
    drawn = [row for i in range(20) for row in source.batch(i, 16)]
    assert not held & {row["prompt"] for row in drawn}
    row = drawn[0]
    x, y = (int(v) for v in row["prompt"][:-1].split("*"))
    assert row["answer"] == str(x * y).zfill(3)[::-1]
    assert source.batch(5, 4) == TextPrompts("task:mul2x1", seed=3).batch(5, 4)


def objective_batch(loss_type, level="token"):
    """A batch of 3 completions with hand-set log-probs and a fake scorer returning new ones."""
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    old = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, 0, 0, 0], [-1.5, -0.2, -0.7, -1.1]]) * mask
    new = old + torch.tensor([[0.1, -0.3, 0.02, 0.0], [0.5, 0, 0, 0], [-0.05, 0.25, 0.0, -0.4]]) * mask
    completions = Completions(
        torch.zeros(3, 6, dtype=torch.long),
        torch.ones(3, 6, dtype=torch.long),
        mask,
        old,
        torch.tensor([False, False, True]),
        torch.tensor([0, 0, 1]),
        ["a", "b", "c"],
    )
    advantages = torch.tensor([1.0, -0.5, 2.0])
    batch = Batch(
        0,
        completions,
        ["p"],
        None,
        torch.arange(2),
        torch.zeros(3),
        torch.ones(3, dtype=torch.bool),
        completions,
        advantages,
        torch.ones(3),
        {},
    )
    context = ObjectiveContext({}, None, None, 0.0, "clip", 5.0, 64, 64, (), lambda i, r: [])
    objective = TokenObjective(
        TokenOptions(epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, importance_sampling_level=level), context
    )
    objective.prepare(batch)
    return objective, batch, mask, old, new, advantages


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_token_loss_types_match_trl_s_formulas_by_hand(loss_type):
    objective, batch, mask, old, new, advantages = objective_batch(loss_type)
    loss, stats = objective.loss(lambda part: new[: len(part)], batch, torch.arange(3), 3.0)

    def per_token(i, t):
        ratio = math.exp(new[i, t] - old[i, t])
        a = float(advantages[i])
        return -min(ratio * a, min(max(ratio, 0.8), 1.28) * a)

    rows = [[per_token(i, t) for t in range(4) if mask[i, t]] for i in range(3)]
    expected = {
        "grpo": sum(sum(r) / len(r) for r in rows) / 3,
        "bnpo": sum(map(sum, rows)) / sum(map(len, rows)),
        "dapo": sum(map(sum, rows)) / sum(map(len, rows)),
        "dr_grpo": sum(map(sum, rows)) / (3 * 4),
    }[loss_type]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gspo_clips_the_length_normalised_sequence_ratio():
    objective, batch, mask, old, new, advantages = objective_batch("grpo", level="sequence")
    objective.options.epsilon, objective.options.epsilon_high = 3e-4, 4e-4
    loss, _ = objective.loss(lambda part: new[: len(part)], batch, torch.arange(3), 3.0)
    expected = 0.0
    for i in range(3):
        s = math.exp(float(((new[i] - old[i]) * mask[i]).sum() / mask[i].sum()))
        a = float(advantages[i])
        expected += -min(s * a, min(max(s, 1 - 3e-4), 1 + 4e-4) * a) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_text_run_trains_writes_its_files_and_resumes_exactly(lm_dir, tmp_path):
    straight = tmp_path / "a"
    train(text_run(lm_dir, straight, "iterations=3", "beta=0.04", "inner_epochs=2", "train_batch=8"))
    records = metric_records(straight, skip_first=True)
    assert len(records) == 3 and all(math.isfinite(r["loss/total"]) for r in records)
    # rollout and update score with one function: the log-probs agree exactly before the first step
    assert all(r["consistency/max_abs_logp_diff"] == 0.0 for r in records)
    assert all(r["consistency/first_ratio_mean"] == pytest.approx(1.0, abs=1e-12) for r in records)
    assert records[-1]["loss/kl"] > 0  # the weights left the reference
    assert (straight / "final" / "model.safetensors").is_file() and is_text_source(str(straight / "final"))
    assert "eval/reward" in records[1] and (straight / "samples" / "iter_00002.json").is_file()
    before = load_text_policy(lm_dir).network.state_dict()
    after = load_text_policy(str(straight / "final")).network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    resumed = tmp_path / "b"
    train(text_run(lm_dir, resumed, "iterations=2", "beta=0.04", "inner_epochs=2", "train_batch=8"))
    train(text_run(lm_dir, resumed, "iterations=3", "beta=0.04", "inner_epochs=2", "train_batch=8"))
    assert same_checkpoint_weights(straight, resumed)
    assert [r["loss/total"] for r in records] == [r["loss/total"] for r in metric_records(resumed, skip_first=True)]


def test_a_text_run_with_lora_exports_a_plain_model(lm_dir, tmp_path):
    train(
        text_run(lm_dir, tmp_path / "lora", "lora_rank=4", "lora_targets=[q_proj,v_proj]", "beta=0.04", "iterations=3")
    )
    records = metric_records(tmp_path / "lora", skip_first=True)
    assert records[0]["loss/kl"] == 0.0 and records[-1]["loss/kl"] > 0  # the reference: adapters switched off
    exported = load_text_policy(str(tmp_path / "lora" / "final")).network.state_dict()
    base = load_text_policy(lm_dir).network.state_dict()
    assert exported.keys() == base.keys()  # LoRA merged into plain weights
    assert not torch.equal(
        exported["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        exported["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=mix_grpo"], "a text policy trains with a text method"),
        (["objective=sde"], "a text policy trains with objective=tokens"),
        (["method.num_generations=1"], "num_generations must be at least 2"),
        (["objective.loss_type=ppo"], "loss_type must be one of"),
        (["prompts=task:div2x2"], "unknown arithmetic task"),
        (["reward=no_such_reward"], "unknown text reward"),
        (["prompts=/no/such.jsonl"], "expected task:NAME"),
        (["eval_prompts=held_out.txt"], "expected task:NAME or an existing .jsonl file"),
        (["method.scale_rewards=global"], "scale_rewards must be one of"),
    ],
)
def test_text_configs_are_checked_before_loading(lm_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        text_run(lm_dir, tmp_path / "x", *overrides)


def test_supervised_batches_train_on_the_answer_and_eos_only():
    from flowrl.llm.pretraining import supervised_batch

    tokenizer = build_tokenizer()
    ids, attention, labels = supervised_batch(
        tokenizer, [{"prompt": "12*3=", "answer": "630"}, {"prompt": "1*2=", "answer": "2"}]
    )
    first = tokenizer("12*3=630")["input_ids"] + [tokenizer.eos_token_id]
    assert ids[0].tolist() == first and attention[0].tolist() == [1] * len(first)
    assert labels[0].tolist() == [-100] * 6 + first[6:]  # BOS + "12*3=" carry no loss
    second = tokenizer("1*2=2")["input_ids"] + [tokenizer.eos_token_id]
    assert attention[1].tolist() == [1] * 7 + [0] * 3 and ids[1, :7].tolist() == second
    assert labels[1].tolist() == [-100] * 5 + second[5:] + [-100] * 3


def test_pretraining_writes_a_loadable_model_and_its_curve(tmp_path):
    from flowrl.llm.pretraining import pretrain

    report = pretrain(
        "add1x1",
        tmp_path / "base",
        minutes=0.02,
        train_rows=50,
        hidden=16,
        layers=1,
        lr=1e-3,
        eval_every=0.5,
        eval_rows=20,
    )
    assert report["curve"][0]["held_out_greedy"] >= 0 and len(report["curve"]) >= 2
    policy = load_text_policy(str(tmp_path / "base"))
    assert policy.sample(["3+4="], 1, max_new_tokens=3, greedy=True).texts[0] is not None
    # the supervised control: the same rows and settings, continued from the base
    from flowrl.llm.pretraining import main

    assert main(["--continue-from", str(tmp_path / "base"), "--out", str(tmp_path / "more"), "--minutes", "0.01"]) == 0
    import json

    report = json.loads((tmp_path / "more" / "pretraining.json").read_text())
    assert report["continued_from"] == str(tmp_path / "base") and report["train_rows"] == 50
    assert report["curve"][0]["held_out_greedy"] == report_curve_end(tmp_path / "base")


def test_supervised_learning_rate_decays_and_a_continued_run_keeps_the_end_rate():
    from flowrl.llm.pretraining import supervised_lr

    assert [supervised_lr(2.0, t, continued=False) for t in (0.0, 0.5, 1.0, 3.0)] == pytest.approx([2.0, 1.1, 0.2, 0.2])
    assert supervised_lr(2.0, 0.0, continued=True) == supervised_lr(2.0, 0.9, continued=True) == pytest.approx(0.2)


def test_pretraining_with_an_average_saves_the_average(tmp_path):
    from flowrl.llm.pretraining import pretrain

    report = pretrain(
        "add1x1", tmp_path / "base", minutes=0.01, train_rows=50, hidden=16, layers=1, lr=1e-3, eval_rows=20, ema=0.99
    )
    from flowrl.llm.pretraining import greedy_accuracy

    task = ArithmeticTask("add1x1")
    saved = greedy_accuracy(load_text_policy(str(tmp_path / "base")), task.held_out(20), task.answer_length + 1)
    assert report["ema"] == 0.99 and saved == report["curve"][-1]["held_out_greedy"]  # the curve ends at the file
    with pytest.raises(ValueError, match="ema must lie in"):
        pretrain("add1x1", tmp_path / "bad", minutes=0.01, train_rows=50, hidden=16, layers=1, lr=1e-3, ema=1.0)
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_dapo_s_overlong_penalty_by_hand():
    from flowrl.llm.rewards import overlong_penalty

    ids = [[0] * n for n in (10, 12, 14, 16, 17)]
    # max_length 16, cache 4: 0 up to 12 tokens, then (12 - n) / 4, -1 beyond 16
    assert overlong_penalty([""] * 5, [""] * 5, ids, max_length=16, cache=4) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="0 < cache <= max_length"):
        overlong_penalty([""], [""], [[0]], max_length=4, cache=5)


def test_joined_batches_score_each_row_as_alone(lm_dir):
    policy = load_text_policy(lm_dir)
    a = policy.sample(["1+2="], 2, max_new_tokens=3, seed=1)
    b = policy.sample(["123+456=", "7+8="], 2, max_new_tokens=6, seed=2)
    joined = Completions.cat([a, b], policy.tokenizer.pad_token_id)
    assert joined.texts == a.texts + b.texts and joined.prompt.tolist() == [0, 0, 0, 0, 1, 1]
    scored = policy.token_logps(joined)
    torch.testing.assert_close(scored[:2, : a.mask.shape[1]], a.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored[2:, : b.mask.shape[1]], b.logp, atol=1e-5, rtol=1e-5)
    assert joined.completion_ids()[2] == b.completion_ids()[0]


def test_a_shuffled_reward_control_trains_on_noise_and_is_judged_truly(lm_dir, tmp_path):
    rows = [{"prompt": f"{i}+0=", "answer": str(i)} for i in range(8)]
    rewards = TextRewardSet("shuffled:exact_match")
    values, _ = rewards(rows, [str(i) for i in range(4)] + ["x"] * 4, seed=3)
    assert sorted(values) == [0.0] * 4 + [1.0] * 4 and values != [1.0] * 4 + [0.0] * 4
    judged, _ = rewards.unshuffled()(rows, [str(i) for i in range(4)] + ["x"] * 4)
    assert judged == [1.0] * 4 + [0.0] * 4
    train(text_run(lm_dir, tmp_path / "control", "reward=shuffled:exact_match", "reward_options={}"))
    assert "eval/accuracy" in metric_records(tmp_path / "control")[-1]


def test_spo_keeps_per_prompt_values_across_a_resume(lm_dir, tmp_path):
    # advantage=spo: no groups needed; the Beta tracker's state is in the checkpoint
    rows = write_rows(tmp_path)
    overrides = (
        "method.advantage=spo",
        "method.num_generations=2",
        f"prompts={rows}",
        f"eval_prompts={rows}",
        "reward=format",  # in [0, 1], as SPO's Beta tracker needs: does the completion hold a digit
        'reward_options={"format": {"pattern": ".*[0-9].*"}}',
    )
    train(text_run(lm_dir, tmp_path / "a", "iterations=3", *overrides))
    train(text_run(lm_dir, tmp_path / "b", "iterations=2", *overrides))
    train(text_run(lm_dir, tmp_path / "b", "iterations=3", *overrides))
    assert same_checkpoint_weights(tmp_path / "a", tmp_path / "b")
    state = torch.load(tmp_path / "b" / "checkpoint" / "state.pt", weights_only=False)
    assert len(state["spo"]["state"]) >= 1


def write_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) for i in range(3)))
    return path


def test_tied_groups_are_redrawn_when_asked(lm_dir, tmp_path):
    # A random model never answers exactly: every group ties, and each round redraws all of them.
    train(text_run(lm_dir, tmp_path / "r", "reward=exact_match", "reward_options={}", "method.resample_rounds=2"))
    records = metric_records(tmp_path / "r", skip_first=True)
    assert all(r["groups/resampled"] == 8 for r in records)  # 4 prompts x 2 rounds


def report_curve_end(directory):
    import json

    return json.loads((directory / "pretraining.json").read_text())["curve"][-1]["held_out_greedy"]


def test_the_imperfect_teacher_drops_the_units_carry_as_told():
    task = ArithmeticTask("add3x3")
    clean, taught = task.train(2000, seed=4), task.train(2000, seed=4, teacher_error=0.7)
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in taught]
    carries = wrong = 0
    for right, row in zip(clean, taught):
        x, y = (int(v) for v in row["prompt"][:-1].split("+"))
        assert right["answer"] == str(x + y).zfill(4)[::-1]
        if x % 10 + y % 10 >= 10:
            carries += 1
            if row["answer"] != right["answer"]:
                wrong += 1
                assert row["answer"] == str(x + y - 10).zfill(4)[::-1]
        else:
            assert row["answer"] == right["answer"]
    assert 0.65 < wrong / carries < 0.75
    with pytest.raises(ValueError, match="teacher_error is a probability for addition tasks"):
        ArithmeticTask("mul2x1").train(10, teacher_error=0.5)


def test_the_shipped_default_trains_through_its_recipe(tmp_path):
    from flowrl.cli_args import resolve_recipe
    from flowrl.config import load_config
    from flowrl.llm.policy import SHIPPED

    report = json.loads((SHIPPED / "pretraining.json").read_text())
    assert (report["task"], report["teacher_error"], report["train_rows"]) == ("add3x3", 0.7, 8000)
    assert (SHIPPED / "model.safetensors").stat().st_size < 10 * 2**20
    overrides = [f"out={tmp_path / 'run'}", "iterations=2", "eval_every=0", "prompts_per_iteration=4", "threads=1"]
    train(load_config(resolve_recipe("llm_toy"), overrides))
    records = metric_records(tmp_path / "run", skip_first=True)
    assert len(records) == 2 and all(math.isfinite(r["reward/mean"]) for r in records)


def test_flowrl_train_ends_a_text_run_with_its_held_out_exact_match(tmp_path, capsys):
    from flowrl import cli

    out = tmp_path / "run"
    overrides = [f"out={out}", "iterations=2", "eval_every=2", "method.eval_size=20", "prompts_per_iteration=2"]
    assert cli.main(["train", "llm_toy", *overrides]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("held-out exact match ") and "(the starting model: " in last and str(out) in last
