"""The toy policy: tokenizer, guidance, save/load in the on-disk format, and pretraining resume."""

import copy
import json
import os

import pytest
import torch

from flowrl.policies.sd3_velocity import sd3_velocity
from flowrl.policies.toy import load_toy, save_toy
from flowrl.schedules import learning_rate
from flowrl.toy_pretraining import build_parser, pretrain, training_batch


def test_tokenizer_pads_and_rejects_unknown_words(tiny_policy):
    encoder = tiny_policy.model.text_encoder
    ids = encoder.tokenize(["a red circle", ""])
    assert ids.shape == (2, 8)
    assert ids[0, 0] == ids[1, 0] == encoder.index["<bos>"]
    assert ids[0, 1:4].tolist() == [encoder.index[w] for w in ("a", "red", "circle")]
    assert (ids[0, 4:] == encoder.index["<pad>"]).all() and (ids[1, 1:] == encoder.index["<pad>"]).all()
    with pytest.raises(ValueError, match=r"does not know: \['pink'\]"):
        encoder.tokenize(["a pink circle"])
    with pytest.raises(ValueError, match="reads at most 7"):
        encoder.tokenize(["a " * 8])


def test_encode_shapes_and_null_prompt(tiny_policy):
    cond = tiny_policy.encode(["a circle", "two squares", "a red circle left of a blue square"[:20]])
    assert cond.prompt_embeds.shape == (3, 8, 16) and cond.pooled.shape == (3, 16)
    assert cond.null_embeds.shape == (1, 8, 16) and cond.null_pooled.shape == (1, 16)
    grouped = cond.repeat_interleave(2)
    assert len(grouped) == 6 and torch.equal(grouped.pooled[2], cond.pooled[1])


def test_guidance_is_one_batched_call_equal_to_two_separate_ones(tiny_policy):
    cond = tiny_policy.encode(["a red circle", "three triangles"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        v_prompt = tiny_policy.velocity(x, sigma, cond, guidance=1.0)
        null = type(cond)(
            cond.null_embeds.expand(2, -1, -1), cond.null_pooled.expand(2, -1), cond.null_embeds, cond.null_pooled
        )
        v_null = sd3_velocity(tiny_policy.transformer, x, sigma, null)
        guided = tiny_policy.velocity(x, sigma, cond, guidance=4.0)
    assert not torch.allclose(v_prompt, v_null)
    torch.testing.assert_close(guided, v_null + 4.0 * (v_prompt - v_null), atol=1e-5, rtol=1e-5)


def test_velocity_rejects_mismatched_batch(tiny_policy):
    cond = tiny_policy.encode(["a circle"])
    with pytest.raises(ValueError, match="conditioning has 1 prompts but x has batch 2"):
        tiny_policy.velocity(torch.zeros(2, 3, 32, 32), torch.tensor(0.5), cond)


def test_save_and_load_round_trip(tiny_policy, tmp_path):
    save_toy(tiny_policy.model, tmp_path, dtype=torch.float32)
    assert json.loads((tmp_path / "config.json").read_text())["num_layers"] == 1
    loaded = load_toy(tmp_path)
    for (name, a), (_, b) in zip(tiny_policy.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    cond = loaded.encode(["a blue square"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.velocity(x, torch.tensor(0.5), cond),
            tiny_policy.velocity(x, torch.tensor(0.5), tiny_policy.encode(["a blue square"])),
        )


def test_half_precision_file_holds_rounded_weights(tiny_policy, tmp_path):
    save_toy(tiny_policy.model, tmp_path)  # default float16 on disk
    loaded = load_toy(tmp_path)
    for (name, a), (_, b) in zip(tiny_policy.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a.half().float(), b), name


def test_missing_directory_fails_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_toy(tmp_path)


def test_training_batch_is_a_function_of_seed_and_step():
    texts, x0 = training_batch(5, 16, seed=1, resolution=32, caption_dropout=0.25)
    again_texts, again_x0 = training_batch(5, 16, seed=1, resolution=32, caption_dropout=0.25)
    assert texts == again_texts and torch.equal(x0, again_x0)
    assert x0.shape == (16, 3, 32, 32) and x0.min() >= -1 and x0.max() <= 1
    assert training_batch(6, 16, seed=1, resolution=32, caption_dropout=0.25)[0] != texts


def test_training_batch_keeps_to_the_split():
    from benchmarks.toyshapes.prompts import prompts_for

    held_out_only = {p.text for p in prompts_for("heldout")} - {p.text for p in prompts_for("train")}
    seen = set()
    for step in range(40):
        seen.update(training_batch(step, 32, seed=0, resolution=32, caption_dropout=0.0, split="train")[0])
    assert held_out_only and not seen & held_out_only
    everything = set()
    for step in range(40):
        everything.update(training_batch(step, 32, seed=0, resolution=32, caption_dropout=0.0)[0])
    assert everything & held_out_only  # the default split does draw them, so the check above can fail


def test_learning_rate_schedule():
    assert learning_rate(0, 1.0, 10, 100, "cosine") == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 100, "cosine") == pytest.approx(1.0)
    assert learning_rate(10, 1.0, 10, 100, "cosine") == pytest.approx(1.0)
    assert learning_rate(100, 1.0, 10, 100, "cosine") == pytest.approx(0.1)
    assert learning_rate(55, 1.0, 10, 100, "cosine") == pytest.approx(0.55)  # half-way down the cosine
    assert learning_rate(4, 2.0, 10, 100) == pytest.approx(1.0) and learning_rate(70, 2.0, 10, 100) == 2.0  # constant
    assert learning_rate(3, 2.0, 0, 100) == 2.0  # no warm-up
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        learning_rate(0, 1.0, 0, 10, "linear")


def _pretrain(out, steps):
    args = build_parser().parse_args(
        [
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch",
            "4",
            "--layers",
            "1",
            "--heads",
            "1",
            "--warmup",
            "2",
            "--checkpoint-every",
            "2",
        ]
    )
    return pretrain(args)


def test_pretraining_changes_weights_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    straight = load_toy(_pretrain(tmp_path / "straight", 4)).model.state_dict()
    _pretrain(tmp_path / "split", 2)
    resumed = load_toy(_pretrain(tmp_path / "split", 4)).model.state_dict()
    start = load_toy(_pretrain(tmp_path / "zero", 0)).model.state_dict()
    assert any(not torch.equal(straight[k], start[k]) for k in straight)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    lines = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 0


def test_pretraining_logs_each_step_once_after_a_resume_or_restart(tmp_path):
    # A crash after step 3 was logged but before its checkpoint: the resume redoes step 3, so its
    # line goes; --restart starts the log over with the weights.
    torch.manual_seed(0)
    _pretrain(tmp_path / "run", 2)
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 3, "loss": 9.0}) + "\n")
    _pretrain(tmp_path / "run", 4)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0]
    args = build_parser().parse_args(
        [
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "2",
            "--batch",
            "4",
            "--layers",
            "1",
            "--heads",
            "1",
            "--warmup",
            "2",
            "--restart",
        ]
    )
    pretrain(args)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0]


def test_pretraining_refuses_a_directory_another_run_holds(tmp_path):
    from flowrl.run_files import lock_run_directory

    (tmp_path / "run").mkdir()
    lock = lock_run_directory(tmp_path / "run", "--out")
    with pytest.raises(ValueError, match=rf"in use by another run \(process {os.getpid()}, this one: .*another --out"):
        _pretrain(tmp_path / "run", 1)
    lock.close()
    _pretrain(tmp_path / "run", 1)


def test_pretraining_from_init_weights_continues_that_model(tmp_path):
    torch.manual_seed(0)
    first = _pretrain(tmp_path / "first", 2)
    init = load_toy(first).model.state_dict()
    common = ["--batch", "4", "--warmup", "2", "--init", str(first), "--seed", "1"]
    unchanged = load_toy(
        pretrain(build_parser().parse_args(["--out", str(tmp_path / "zero"), "--steps", "0", *common]))
    ).model
    assert unchanged.config.num_layers == 1  # the architecture of --init, not the default 4
    for name, value in unchanged.state_dict().items():
        assert torch.equal(value, init[name]), name
    moved = load_toy(
        pretrain(build_parser().parse_args(["--out", str(tmp_path / "more"), "--steps", "2", *common]))
    ).model.state_dict()
    assert any(not torch.equal(moved[k], init[k]) for k in init)
    with pytest.raises(ValueError, match="--layers 4 but the model has 1"):
        pretrain(build_parser().parse_args(["--out", str(tmp_path / "bad"), "--steps", "1", "--layers", "4", *common]))


def test_guided_velocity_gradient_is_its_exact_derivative(tiny_policy):
    # The guided velocity v_null + g (v_prompt - v_null) is the policy's mean, so its gradient must
    # be the derivative of the value the sampler uses: checked against a central difference along a
    # random direction of every transformer weight, in float64.
    transformer = copy.deepcopy(tiny_policy.transformer).double()
    cond = tiny_policy.encode(["a red circle", "two squares"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.8, 0.3], dtype=torch.float64)
    weights = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    params = [p for p in transformer.parameters() if p.requires_grad]
    direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]

    def objective() -> torch.Tensor:
        return (weights * sd3_velocity(transformer, x, sigma, cond, 4.0)).sum()

    grads = torch.autograd.grad(objective(), params)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    eps = 1e-6
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            values.append(float(objective()))
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6)
    # The unconditional branch carries weight 1 - g of the gradient: the empty prompt gets one.
    cond.null_embeds = cond.null_embeds.clone().requires_grad_()
    objective().backward()
    assert cond.null_embeds.grad is not None and bool(cond.null_embeds.grad.any())


def test_guided_velocity_builds_a_graph_over_both_halves_in_training_only(tiny_policy):
    # Training with guidance: both halves run as separate calls with a graph; sampling and
    # guidance 1 as before.
    cond = tiny_policy.encode(["a red circle", "two squares", "a circle"])
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor([0.9, 0.5, 0.2])
    calls = []
    hook = tiny_policy.transformer.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((kwargs["hidden_states"].shape[0], out[0].requires_grad)),
        with_kwargs=True,
    )
    try:
        tiny_policy.velocity(x, sigma, cond, 4.0)
        with torch.no_grad():
            tiny_policy.velocity(x, sigma, cond, 4.0)
        tiny_policy.velocity(x, sigma, cond, 1.0)
    finally:
        hook.remove()
    assert calls == [(3, True), (3, True), (3, False), (3, False), (3, True)]


def test_guided_velocity_matches_the_batched_one_call_form(tiny_policy):
    # benchmarks/speed/guidance.py times sd3_velocity against the one-call form (both halves in
    # one batch of 2B) and the no-graph form of before; all three compute the same guided velocity,
    # and the first two the same gradient (the third's is what the fix changed).
    from flowrl.benchmarks.speed.guidance import batched_velocity, prompt_branch_velocity

    cond = tiny_policy.encode(["a red circle", "two squares"])
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.8, 0.3])
    results = []
    for form in (batched_velocity, sd3_velocity, prompt_branch_velocity):
        tiny_policy.transformer.zero_grad(set_to_none=True)
        v = form(tiny_policy.transformer, x, sigma, cond, 4.0)
        v.square().sum().backward()
        results.append(
            (v.detach(), [p.grad.clone() for p in tiny_policy.transformer.parameters() if p.grad is not None])
        )
    (v_batched, g_batched), (v_split, g_split), (v_no_graph, g_no_graph) = results
    torch.testing.assert_close(v_split, v_batched, rtol=1e-5, atol=1e-5)
    assert torch.equal(v_no_graph, v_split)
    assert len(g_split) == len(g_batched) > 0
    for a, b in zip(g_split, g_batched):  # float32 summation order differs between batch layouts
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert any(not torch.allclose(a, b, rtol=1e-2, atol=0) for a, b in zip(g_no_graph, g_split))
