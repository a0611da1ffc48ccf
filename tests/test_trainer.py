"""The trainer end to end on a tiny toy model: it learns something, writes what it promises,
resumes exactly, and its LoRA/KL machinery matches independent computations."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    metric_records,
    metric_values,
    same_checkpoint_weights,
    tiny_run,
    tiny_run_overrides,
    train_one_iteration,
)
from flowrl.backend import TrainingBackend
from flowrl.config import build_config
from flowrl.metrics import combine_processes
from flowrl.policies.toy import load_toy
from flowrl.samplers.methods import METHODS
from flowrl.trainer import Trainer, train


def test_a_run_updates_weights_and_writes_everything(tiny_dir, tmp_path):
    config = tiny_run(tiny_dir, tmp_path / "run", "eval_every=2", "eval_per_category=1", "eval_steps=2")
    before = load_toy(tiny_dir).transformer.state_dict()
    summary = train(config)
    assert summary["iterations"] == 2
    records = metric_records(tmp_path / "run")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for key in (
        "reward/mean",
        "reward/std",
        "advantage/std",
        "clip_fraction",
        "loss/policy",
        "nfe",
        "time/rollout",
        "time/update",
    ):
        assert key in records[1] and math.isfinite(records[1][key])  # present and not NaN
    assert records[1]["nfe"] == 2 * 3 * 4  # prompts x group x steps, no guidance rows counted twice
    assert "eval/overall" in records[0] and "eval/overall" in records[2]
    assert records[1]["ratio/mean"] == pytest.approx(1.0, abs=1e-5)  # on-policy: re-scored logp equals the rollout's
    after = load_toy(tmp_path / "run" / "final").transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name in (
        "config.json",
        "reward_curve.png",
        "samples/iter_00002.png",
        "checkpoint/trainable.safetensors",
        "checkpoint/state.pt",
    ):
        assert (tmp_path / "run" / name).is_file()


def test_the_cli_pairs_the_last_evaluation_with_the_starting_model(tiny_dir, tmp_path, capsys):
    """`flowrl train` ends with the held-out accuracy and, image by image against iteration 0's
    evaluation (the starting model), the difference with its interval and p-value."""
    from flowrl.benchmarks.report import format_difference, format_interval, format_p
    from flowrl.benchmarks.toyshapes.report import load_report, paired_toyshapes, paired_toyshapes_scores
    from flowrl.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("method: flow_grpo\n")  # a recipe of defaults; the tiny run's settings as overrides
    overrides = tiny_run_overrides(tiny_dir, tmp_path / "run") + ["eval_every=2", "eval_per_category=2", "eval_steps=2"]
    assert main(["train", str(recipe), *overrides]) == 0
    out = capsys.readouterr().out
    start, end = (load_report(tmp_path / "run" / "samples" / f"iter_0000{i}.json") for i in (0, 2))
    overall, score = paired_toyshapes(start, end)[0][-1], paired_toyshapes_scores(start, end)[0][-1]
    assert overall.n == 12  # 2 images in each of the 6 categories
    # The dense score's difference, written out: the mean over categories of each one's mean difference.
    differences = {}
    for a, b in zip(start.records, end.records):
        differences.setdefault(a["category"], []).append(b["score"] - a["score"])
    assert score.difference == pytest.approx(sum(sum(d) / len(d) for d in differences.values()) / 6, abs=1e-12)
    assert "vs iteration 0 (the starting model), image by image on the same 12 images:" in out
    assert (
        f"  overall        {100 * start.overall:5.1f}% -> {100 * end.overall:5.1f}%  {format_difference(overall.difference)} "
        f"(95% interval {format_interval(overall)}, p {format_p(overall.p_value)})"
    ) in out
    assert (
        f"  dense score    {start.mean_score:.3f} -> {end.mean_score:.3f}  {score.difference:+.3f} "
        f"(95% interval {score.interval[0]:+.3f} to {score.interval[1]:+.3f}, p {format_p(score.p_value)})"
    ) in out
    counting = paired_toyshapes(start, end)[0][2]
    assert (
        counting.name == "counting"
        and (
            f"  counting       {100 * start.accuracy['counting']:5.1f}% -> {100 * end.accuracy['counting']:5.1f}%  "
            f"{format_difference(counting.difference)}"
        )
        in out
    )
    assert "held-out ToyShapes accuracy" in out
    # the picture: iteration 0's grid above the last evaluation's, one label each
    from PIL import Image

    picture = Image.open(tmp_path / "run" / "before_after.png")
    grids = [Image.open(tmp_path / "run" / "samples" / f"iter_0000{i}.png") for i in (0, 2)]
    assert picture.height == sum(g.height for g in grids) + 2 * 18 and picture.width == grids[0].width
    # Run again: the run is complete, so nothing trains and the same figures are reported as such.
    assert main(["train", str(recipe), *overrides]) == 0
    again = capsys.readouterr().out
    assert "done: 2 iterations" in again and "already complete: nothing to train" in again and "iteration 2)" in again
    assert [line for line in again.splitlines() if line.startswith(("held-out", "vs iteration 0", "  "))] == [
        line for line in out.splitlines() if line.startswith(("held-out", "vs iteration 0", "  "))
    ]


def test_rerunning_a_finished_run_without_evaluations_says_only_that_it_is_complete(tiny_dir, tmp_path, capsys):
    from flowrl.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("method: flow_grpo\n")
    overrides = tiny_run_overrides(tiny_dir, tmp_path / "run")  # eval_every=0: no evaluation
    assert main(["train", str(recipe), *overrides]) == 0
    capsys.readouterr()
    assert main(["train", str(recipe), *overrides]) == 0
    assert (
        capsys.readouterr().out.strip().splitlines()[-1]
        == f"done: 2 iterations in {tmp_path / 'run'} (already complete: nothing to train)"
    )


def test_resume_continues_exactly(tiny_dir, tmp_path):
    straight = tiny_run(tiny_dir, tmp_path / "a", "iterations=3")
    train(straight)
    first = tiny_run(tiny_dir, tmp_path / "b", "iterations=2")
    train(first)
    train(tiny_run(tiny_dir, tmp_path / "b", "iterations=3"))  # resumes from the step-2 checkpoint
    assert same_checkpoint_weights(tmp_path / "a", tmp_path / "b")
    assert metric_values(tmp_path / "a", "reward/mean") == metric_values(tmp_path / "b", "reward/mean")


def test_resume_drops_records_past_the_checkpoint_and_only_rank0_rewrites_them(tiny_dir, tmp_path):
    # A crash after iteration 3 was logged but before its checkpoint: the resume redoes iteration 3,
    # so its record goes. Only rank 0 rewrites the file: a second process rewriting it raced with
    # rank 0's appends and once left just the last record (CI, 2-process FSDP resume).
    train(tiny_run(tiny_dir, tmp_path / "r", "iterations=2"))
    path = tmp_path / "r" / "metrics.jsonl"
    logged = path.read_text()
    path.write_text(logged + json.dumps({"iteration": 3, "reward/mean": 0.5}) + "\n")
    other_rank = Trainer(tiny_run(tiny_dir, tmp_path / "r", "iterations=4"))
    other_rank.checkpoints.rank = 1
    assert other_rank.checkpoints.resume() and other_rank.progress.iteration == 2
    assert metric_values(tmp_path / "r", "iteration") == [0, 1, 2, 3]
    other_rank.close()  # it holds the directory (it was built as rank 0)
    assert Trainer(tiny_run(tiny_dir, tmp_path / "r", "iterations=4")).checkpoints.resume()
    assert path.read_text() == logged and metric_values(tmp_path / "r", "iteration") == [0, 1, 2]
    assert sorted(p.name for p in path.parent.glob("metrics*")) == ["metrics.jsonl"]  # no temporary left


def test_resume_refuses_a_different_run(tiny_dir, tmp_path):
    train(tiny_run(tiny_dir, tmp_path / "c", "iterations=1"))
    with pytest.raises(ValueError, match="different run.*method"):
        Trainer(tiny_run(tiny_dir, tmp_path / "c", "iterations=2", "method=dance_grpo")).checkpoints.resume()


def test_a_run_that_does_not_resume_starts_over_and_equals_a_fresh_run(tiny_dir, tmp_path):
    # An earlier, longer run with evaluations; then the same directory with resume=false, and a
    # directory holding only a crashed run's metrics (no checkpoint): both must end up exactly as
    # a fresh run elsewhere, with none of the earlier run's records, samples or checkpoint.
    evals = ("eval_every=1", "eval_per_category=1", "eval_steps=2")
    train(tiny_run(tiny_dir, tmp_path / "fresh", "iterations=1", *evals))
    train(tiny_run(tiny_dir, tmp_path / "reused", "iterations=3", "seed=5", *evals))
    assert (tmp_path / "reused" / "samples" / "iter_00003.json").is_file()
    train(tiny_run(tiny_dir, tmp_path / "reused", "iterations=1", "resume=false", *evals))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "metrics.jsonl").write_text(
        "".join(json.dumps({"iteration": i, "reward/mean": 9.0}) + "\n" for i in range(3))
    )
    train(tiny_run(tiny_dir, crashed, "iterations=1", *evals))

    def records(d):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in metric_records(d)]

    for run in (tmp_path / "reused", crashed):
        assert same_checkpoint_weights(run, tmp_path / "fresh"), run
        assert records(run) == records(tmp_path / "fresh") and [r["iteration"] for r in records(run)] == [0, 1], run
        assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(
            p.name for p in (tmp_path / "fresh" / "samples").iterdir()
        )


def test_an_iteration_whose_reward_fails_leaves_a_checkpoint_of_the_last_one_and_the_resume_is_exact(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    import conftest

    settings = ("reward=conftest:brightness_failing_on_demand", "iterations=5", "checkpoint_every=100")
    monkeypatch.setitem(conftest.REWARD_FAILURES, "calls", 0)
    # one call at config time (the dry call of a reward function), then one per iteration: the fourth fails
    monkeypatch.setitem(conftest.REWARD_FAILURES, "after_calls", 4)
    with pytest.raises(ConnectionError, match="service is down"):
        train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    assert metric_values(tmp_path / "failed", "iteration") == [0, 1, 2, 3]
    assert torch.load(tmp_path / "failed" / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 3
    assert (
        f"iteration 4 (before its update) failed; saved a checkpoint of iteration 3 in {tmp_path / 'failed' / 'checkpoint'}"
        in capsys.readouterr().err
    )

    monkeypatch.setitem(conftest.REWARD_FAILURES, "after_calls", None)  # the service is back
    train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    train(tiny_run(tiny_dir, tmp_path / "straight", *settings))
    assert same_checkpoint_weights(tmp_path / "failed", tmp_path / "straight")
    rewards = metric_values(tmp_path / "straight", "reward/mean")
    assert metric_values(tmp_path / "failed", "reward/mean") == rewards and len(rewards) == 6


def fail_the_second_evaluation(monkeypatch) -> None:
    """The ToyShapes evaluation raises on its second call (the first after iteration 0's)."""
    import flowrl.benchmarks.toyshapes.evaluate as evaluation

    real, calls = evaluation.evaluate_toyshapes, []

    def failing_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("the evaluation's service is down")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_toyshapes", failing_second_time)


def test_a_failed_evaluation_keeps_its_iteration_and_the_resume_is_exact(tiny_dir, tmp_path, monkeypatch, capsys):
    # The evaluation after iteration 2 fails (the starting model's, iteration 0, was the first call):
    # iteration 2's update is kept, its record written without the evaluation, and checkpointed.
    settings = ("iterations=4", "checkpoint_every=100", "eval_every=2", "eval_per_category=1", "eval_steps=2")
    fail_the_second_evaluation(monkeypatch)
    with pytest.raises(ConnectionError, match="service is down"):
        train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    monkeypatch.undo()
    records = metric_records(tmp_path / "failed")
    assert (
        [r["iteration"] for r in records] == [0, 1, 2]
        and "eval/overall" in records[0]
        and "eval/overall" not in records[2]
    )
    assert torch.load(tmp_path / "failed" / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 2
    assert "the evaluation after iteration 2 failed; saved a checkpoint of iteration 2" in capsys.readouterr().err

    train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    assert "evaluating iteration 2 again (its evaluation failed in the last run)" in capsys.readouterr().err
    train(tiny_run(tiny_dir, tmp_path / "straight", *settings))
    assert same_checkpoint_weights(tmp_path / "failed", tmp_path / "straight")
    assert metric_values(tmp_path / "failed", "reward/mean") == metric_values(tmp_path / "straight", "reward/mean")
    # The resume evaluated iteration 2 first: every evaluation and sample file equals the uninterrupted run's.
    evaluations = metric_values(tmp_path / "straight", "eval/overall")
    assert metric_values(tmp_path / "failed", "eval/overall") == evaluations and [
        e is not None for e in evaluations
    ] == [True, False, True, False, True]

    def samples(run):
        return {p.name: p.read_bytes() for p in (run / "samples").glob("*.json")}

    assert samples(tmp_path / "failed") == samples(tmp_path / "straight") and len(samples(tmp_path / "failed")) == 3


def test_a_resume_without_evaluations_skips_the_failed_one_and_keeps_the_record(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    settings = ("iterations=3", "checkpoint_every=100", "eval_per_category=1", "eval_steps=2")
    fail_the_second_evaluation(monkeypatch)
    with pytest.raises(ConnectionError):
        train(tiny_run(tiny_dir, tmp_path / "run", *settings, "eval_every=2"))
    monkeypatch.undo()
    capsys.readouterr()
    train(tiny_run(tiny_dir, tmp_path / "run", *settings, "eval_every=0"))
    assert "again" not in capsys.readouterr().err
    assert metric_values(tmp_path / "run", "iteration") == [0, 1, 2, 3]
    assert [e is not None for e in metric_values(tmp_path / "run", "eval/overall")] == [True, False, False, False]
    assert not torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)["evaluation_due"]


def test_complete_record_adds_to_one_iteration_and_names_a_missing_one(tmp_path):
    from flowrl.run_files import complete_record

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "reward/mean": i / 10}) + "\n" for i in range(3)))
    assert complete_record(path, 1, {"eval/overall": 0.5}) == {"iteration": 1, "reward/mean": 0.1, "eval/overall": 0.5}
    assert metric_records(tmp_path) == [
        {"iteration": 0, "reward/mean": 0.0},
        {"iteration": 1, "reward/mean": 0.1, "eval/overall": 0.5},
        {"iteration": 2, "reward/mean": 0.2},
    ]
    with pytest.raises(ValueError, match=f"{path} has no record of iteration 7"):
        complete_record(path, 7, {"eval/overall": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary left


def fail_in_update_of_iteration(monkeypatch, number: int, where: str, error: Exception) -> None:
    """Make the update of iteration `number` raise `error` in `where`: "backward" (its first
    backward pass) or "average_gradients" (inside its first optimizer step, after the point
    from which the weights may have changed); both are the training backend's."""
    method, update = getattr(TrainingBackend, where), Trainer.update
    current = {}

    def recording_update(self, batch, iteration):
        current["iteration"] = iteration
        return update(self, batch, iteration)

    def failing(self, *args, **kwargs):
        if current.get("iteration") == number - 1:
            raise error
        return method(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "update", recording_update)
    monkeypatch.setattr(TrainingBackend, where, failing)


def test_an_update_out_of_memory_before_its_first_step_leaves_a_checkpoint_and_the_resume_is_exact(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    settings = ("iterations=5", "checkpoint_every=100")
    fail_in_update_of_iteration(
        monkeypatch, 4, "backward", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    with pytest.raises(torch.OutOfMemoryError):
        train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    monkeypatch.undo()
    assert metric_values(tmp_path / "failed", "iteration") == [0, 1, 2, 3]
    assert torch.load(tmp_path / "failed" / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 3
    err = capsys.readouterr().err
    assert (
        "the update of iteration 4 (before its first optimizer step) failed; saved a checkpoint of iteration 3" in err
    )
    assert "out of memory in the update: a smaller micro_batch= than 64" in err

    # The rerun may take smaller micro-batches (the same update up to rounding); with the same ones it is exact.
    train(tiny_run(tiny_dir, tmp_path / "failed", *settings))
    train(tiny_run(tiny_dir, tmp_path / "straight", *settings))
    assert same_checkpoint_weights(tmp_path / "failed", tmp_path / "straight")
    rewards = metric_values(tmp_path / "straight", "reward/mean")
    assert metric_values(tmp_path / "failed", "reward/mean") == rewards and len(rewards) == 6


def test_a_failure_with_nothing_new_to_save_says_where_a_rerun_resumes(tiny_dir, tmp_path, monkeypatch, capsys):
    # Checkpoints after every iteration (the tiny run's checkpoint_every=1): iteration 1 is saved already.
    fail_in_update_of_iteration(monkeypatch, 2, "backward", RuntimeError("a backward pass failed"))
    with pytest.raises(RuntimeError, match="backward pass failed"):
        train(tiny_run(tiny_dir, tmp_path / "run", "iterations=3"))
    err = capsys.readouterr().err
    assert (
        f"the update of iteration 2 (before its first optimizer step) failed; a rerun resumes from the checkpoint of iteration 1 in {tmp_path / 'run' / 'checkpoint'}"
        in err
    )
    monkeypatch.undo()
    fail_in_update_of_iteration(monkeypatch, 1, "backward", RuntimeError("a backward pass failed"))
    with pytest.raises(RuntimeError):
        train(tiny_run(tiny_dir, tmp_path / "fresh", "iterations=3"))
    assert (
        "the update of iteration 1 (before its first optimizer step) failed; a rerun starts over (no checkpoint yet)"
        in capsys.readouterr().err
    )


def test_an_update_that_fails_in_its_optimizer_step_saves_nothing_and_says_where_a_rerun_resumes(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    # The step may have changed some weights: the checkpoint of iteration 2 is the last safe state.
    fail_in_update_of_iteration(monkeypatch, 4, "average_gradients", RuntimeError("an optimizer step failed"))
    with pytest.raises(RuntimeError, match="optimizer step failed"):
        train(tiny_run(tiny_dir, tmp_path / "failed", "iterations=5", "checkpoint_every=2"))
    assert torch.load(tmp_path / "failed" / "checkpoint" / "state.pt", weights_only=False)["iteration"] == 2
    err = capsys.readouterr().err
    assert (
        f"the update of iteration 4 failed after changing the weights; a rerun resumes from the checkpoint of iteration 2 in {tmp_path / 'failed' / 'checkpoint'}"
        in err
    )
    assert "saved a checkpoint" not in err and "out of memory" not in err


def test_a_second_run_into_a_busy_directory_is_refused_before_any_model_loads(tiny_dir, tmp_path, monkeypatch):
    first = Trainer(tiny_run(tiny_dir, tmp_path / "run"))
    loaded = []
    monkeypatch.setattr("flowrl.trainer.load_policy", lambda *a, **k: loaded.append(a) or pytest.fail("loaded a model"))
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(tmp_path / 'run'))} is in use by another run \(process {os.getpid()}, this one: "
        r"a run started here has not ended \(a Trainer's close\(\) frees it\)\); wait for it to finish, or give this one another out=",
    ):
        Trainer(tiny_run(tiny_dir, tmp_path / "run"))
    assert not loaded
    monkeypatch.undo()
    first.close()

    # A start that fails after taking the directory (here the model's loading) frees it again,
    # though the failed object lives on in the traceback, as in a notebook.
    def broken(*args, **kwargs):
        raise OSError("the model could not be read")

    monkeypatch.setattr("flowrl.trainer.load_policy", broken)
    with pytest.raises(OSError, match="could not be read") as failed:
        Trainer(tiny_run(tiny_dir, tmp_path / "run"))
    monkeypatch.undo()
    assert failed.tb is not None  # held here, its frames keep the failed Trainer alive
    assert (
        train(tiny_run(tiny_dir, tmp_path / "run", "iterations=1"))["iterations"] == 1
    )  # released: the directory works again


def test_the_run_lock_is_held_by_a_live_process_and_gone_with_a_killed_one(tiny_dir, tmp_path):
    # Another process holds the directory (as a `flowrl train` there would): the CLI refuses with
    # its pid. Killed (a crash), it leaves no stale lock behind.
    from flowrl.cli import main

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from flowrl.run_files import lock_run_directory; "
            f"lock = lock_run_directory(Path({str(out)!r}), 'out='); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by another run \(process {holder.pid}\)"):
            Trainer(tiny_run(tiny_dir, out))
    finally:
        holder.kill()
        holder.wait()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("method: flow_grpo\n")
    assert main(["train", str(recipe), *tiny_run_overrides(tiny_dir, out), "iterations=1"]) == 0
    assert (out / ".lock").read_text().strip() == str(os.getpid())  # the last holder's pid, for the next refusal


def test_lora_trains_only_adapters_and_the_reference_is_the_base_model(tiny_dir, tmp_path):
    config = tiny_run(tiny_dir, tmp_path / "lora", "iterations=1", "lora_rank=4", "beta=0.1")
    trainer = Trainer(config)
    names = set(trainer.params)
    assert names and all("lora" in n for n in names)
    base = load_toy(tiny_dir)
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor([0.9, 0.5, 0.2])
    cond = base.encode(["a red circle", "two squares", "a blue triangle"])
    with torch.no_grad():
        for p in trainer.params.values():
            p.add_(0.05 * torch.randn_like(p))  # make the adapters matter
        with trainer.reference.active():
            ref_v = trainer.policy.velocity(x, sigma, cond, 4.0)
        lora_v = trainer.policy.velocity(x, sigma, cond, 4.0)
        base_v = base.velocity(x, sigma, cond, 4.0)
    assert torch.allclose(ref_v, base_v, atol=1e-5)
    assert not torch.allclose(lora_v, base_v, atol=1e-3)
    frozen = {n: p.detach().clone() for n, p in trainer.policy.transformer.named_parameters() if "lora" not in n}
    trainer.train()
    for n, p in trainer.policy.transformer.named_parameters():
        if "lora" not in n:
            assert torch.equal(p, frozen[n]), n
    record = metric_records(tmp_path / "lora")[-1]
    assert record["loss/kl"] > 0
    # the exported model has the adapters merged: same velocity as the LoRA policy
    exported = load_toy(tmp_path / "lora" / "final")
    with torch.no_grad():
        assert torch.allclose(
            exported.velocity(x, sigma, cond, 4.0), trainer.policy.velocity(x, sigma, cond, 4.0), atol=1e-4
        )


def test_full_fine_tuning_reference_is_the_initial_model(tiny_dir, tmp_path):
    trainer = Trainer(tiny_run(tiny_dir, tmp_path / "full", "beta=0.5"))
    base = load_toy(tiny_dir)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.3])
    cond = base.encode(["a red circle", "two squares"])
    with torch.no_grad():
        for p in trainer.params.values():
            p.add_(0.01 * torch.randn_like(p))
        moved = trainer.policy.velocity(x, sigma, cond, 1.0)
        with trainer.reference.active():
            assert torch.allclose(
                trainer.policy.velocity(x, sigma, cond, 1.0), base.velocity(x, sigma, cond, 1.0), atol=1e-6
            )
        assert torch.equal(trainer.policy.velocity(x, sigma, cond, 1.0), moved)  # weights restored after


@pytest.mark.parametrize("objective", ["sde", "matching", "nft"])
def test_full_fine_tuning_with_a_kl_trains(tiny_dir, tmp_path, objective):
    """The reference swaps the initial weights in place; it must not do so between a forward with
    grad and its backward (autograd refuses the modified weights)."""
    train(tiny_run(tiny_dir, tmp_path / objective, "beta=0.1", f"objective={objective}"))
    records = metric_records(tmp_path / objective, skip_first=True)
    assert records[0]["loss/kl"] == pytest.approx(
        0.0, abs=1e-12
    )  # the first (only) step of iteration 1 starts at the reference
    assert records[-1]["loss/kl"] > 0


# Settings that make each method's rollout fit the tiny run's 4 steps (a method not named here runs on its defaults).
TINY_METHOD_OPTIONS = {
    "dance_grpo": [],
    "mix_grpo": ["method.window=2"],
    "mix_grpo_flash": ["method.window=2", "method.num_steps=6"],
    "branch_grpo": ["method.split_steps=[0, 2]", "method.group_size=1"],
    "branch_grpo_mix": ["method.split_steps=[0, 2]", "method.mix_window=[0, 3]", "method.group_size=1"],
    "tree_rpo": ["method.window=2", "method.group_size=1"],
    "tempflow_grpo": ["method.probes=2", "method.group_size=2"],
    "g2rpo": ["method.sde_steps=[0, 1]", "method.probes=2", "method.tail_strides=[1, 2]", "method.group_size=1"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_through_the_same_loop(tiny_dir, tmp_path, method):
    record = train_one_iteration(tiny_dir, tmp_path / method, f"method={method}", *TINY_METHOD_OPTIONS.get(method, []))
    assert math.isfinite(record["loss/policy"]) and record["ratio/mean"] == pytest.approx(1.0, abs=1e-5)


def test_a_nan_reward_stops_naming_the_samples_or_drops_their_prompts(tiny_dir, tmp_path):
    from flowrl.rewards import InvalidRewardError

    with pytest.raises(
        InvalidRewardError, match=r"reward 'conftest:brightness_nan_for_dark' returned NaN or inf for samples \d"
    ):
        train(tiny_run(tiny_dir, tmp_path / "error", "reward=conftest:brightness_nan_for_dark"))
    summary = train(
        tiny_run(
            tiny_dir,
            tmp_path / "drop",
            "reward=conftest:brightness_nan_for_dark",
            "reward_invalid=drop",
            "prompts_per_iteration=3",
        )
    )
    record = summary["last"]
    assert 0 < record["reward/invalid"] < record["samples"]
    # every prompt with a failed sample is out of the update; the others are trained
    clean = train(tiny_run(tiny_dir, tmp_path / "clean", "prompts_per_iteration=3"))["last"]
    assert record["transitions/trained"] < clean["transitions/trained"]
    assert math.isfinite(record["reward/conftest:brightness_nan_for_dark/mean"])  # NaNs left out


def test_a_weighted_sum_with_a_pairwise_term_is_logged_per_term(tiny_dir, tmp_path):
    spec = "2*conftest:brightness_reward+pairwise:conftest:brightness_reward"
    record = train(tiny_run(tiny_dir, tmp_path / "sum", f"reward={spec}", "iterations=1"))["last"]
    bright, wins = (
        record["reward/conftest:brightness_reward/mean"],
        record["reward/pairwise:conftest:brightness_reward/mean"],
    )
    assert wins == pytest.approx(0.5)  # every pair of a group judged once: win rates average 1/2
    assert record["reward/mean"] == pytest.approx(2 * bright + wins, rel=1e-5)


def test_bad_config_fails_before_any_model_loads(tmp_path, capsys):
    cases = [
        (["lrr=1"], "unknown config key 'lrr'"),
        (["lr=fast"], "lr='fast': expected float"),
        (["method.windw=3", "method=mix_grpo"], r"no option\(s\) \['windw'\]"),
        (["method=grpo_x"], "unknown method 'grpo_x'"),
        (["iterations=0"], "iterations=0: must be at least 1"),
        (["reward=pikscore"], r"reward='pikscore': unknown reward 'pikscore'; known: \["),
        (["reward=0.5*"], r"reward='0.5\*': reward spec '0.5\*': cannot read the term"),
        (["reward=ocr", "reward_options={hps: {}}"], r"options for \['hps'\], which reward='ocr' does not name"),
        (["reward=remote:localhost:80"], r"expected remote:http://host:port"),
        (["reward_invalid=skip"], r"reward_invalid='skip': expected one of \('error', 'drop'\)"),
        (
            ["prompts=toyshapes:trian"],
            r"unknown split 'trian'; expected toyshapes:train, toyshapes:heldout or toyshapes:all",
        ),
        (
            ["prompts=toyshapes:train:counting,shapes"],
            r"unknown categories \['shapes'\]; expected a comma-separated list of \['single_object'",
        ),
    ]
    # The first through the real entry point (exit status, no traceback); the rest in this process
    # through the same main(), which saves a Python start-up per case.
    (overrides, message), rest = cases[0], cases[1:]
    result = subprocess.run(
        [sys.executable, "-m", "flowrl", "train", f"out={tmp_path / 'x'}", *overrides], capture_output=True, text=True
    )
    assert (
        result.returncode == 2 and result.stderr.count("flowrl train: error") == 1 and "Traceback" not in result.stderr
    ), result.stderr
    assert re.search(message, result.stderr), result.stderr
    from flowrl.cli import main

    for overrides, message in rest:
        assert main(["train", f"out={tmp_path / 'x'}", *overrides]) == 2, overrides
        stderr = capsys.readouterr().err
        assert stderr.count("flowrl train: error") == 1 and re.search(message, stderr), stderr
    assert not (tmp_path / "x").exists()  # nothing written, nothing loaded


def test_every_shipped_recipe_validates_and_covers_every_method():
    from pathlib import Path

    from flowrl.cli import resolve_recipe
    from flowrl.config import load_config
    from flowrl.samplers.methods import METHODS

    recipes = sorted((Path(__file__).resolve().parent.parent / "flowrl" / "recipes").glob("*.yaml"))
    methods = {load_config(path).method for path in recipes}
    assert set(METHODS) <= methods
    assert resolve_recipe("toy").name == "toy.yaml"
    # The SD3.5/FLUX recipes name their shipped prompt files relative to the recipe.
    for name in (
        "sd35m_pickscore",
        "sd35m_ocr",
        "sd35m_geneval",
        "sd35m_nft_geneval",
        "sd35m_nft_pickscore",
        "sd35m_nft_ocr",
        "flux_dev_pickscore",
        "flux_dev_pref_grpo",
    ):
        config = load_config(resolve_recipe(name))
        assert Path(config.prompts).is_file() and Path(config.eval_prompts).is_file() and config.policy.count("/") == 1
    assert (
        load_config(resolve_recipe("sd35m_ocr"), ["prompts=flowrl/recipes/prompts/ocr_eval.txt"]).prompts
        == "flowrl/recipes/prompts/ocr_eval.txt"
    )
    with pytest.raises(ValueError, match="shipped"):
        resolve_recipe("no_such_recipe")


def test_toyshapes_prompts_are_category_balanced_and_reproducible():
    from collections import Counter

    from flowrl.benchmarks.toyshapes.prompts import CATEGORIES, parse_prompt, split_of
    from flowrl.prompt_source import PromptSource

    source = PromptSource("toyshapes:train", seed=3)
    drawn = [t for i in range(200) for t in source.batch(i, 6)]
    counts = Counter(parse_prompt(t).category for t in drawn)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) > 0.12 * len(drawn)  # 1/6 each, not by prompt count
    assert all(split_of(t) in ("train", "both") for t in drawn)
    assert PromptSource("toyshapes:train", seed=3).batch(7, 6) == source.batch(7, 6)
    assert source.batch(8, 6) != source.batch(7, 6)
    # Naming every category in CATEGORIES' order draws exactly what naming none does.
    assert PromptSource("toyshapes:train:" + ",".join(CATEGORIES), seed=3).batch(7, 6) == source.batch(7, 6)


def test_toyshapes_prompts_of_some_categories_are_balanced_among_them():
    from collections import Counter

    from flowrl.benchmarks.toyshapes.prompts import parse_prompt, prompts_for, split_of
    from flowrl.prompt_source import PromptSource

    source = PromptSource("toyshapes:train:two_object, color_attr", seed=1)
    assert source.toyshapes_categories == ("two_object", "color_attr")
    assert set(source.pool) == {p.text for p in prompts_for("train", ("two_object", "color_attr"))}
    drawn = [t for i in range(100) for t in source.batch(i, 6)]
    counts = Counter(parse_prompt(t).category for t in drawn)
    # 6 two-object prompts against 135 colour-binding ones, yet half the draws each (binomial sd 0.02)
    assert set(counts) == {"two_object", "color_attr"} and abs(counts["two_object"] / len(drawn) - 0.5) < 0.08
    assert (
        len(set(drawn) & {p.text for p in prompts_for("train", ("color_attr",))}) > 50
    )  # draws spread over the category
    assert all(split_of(t) in ("train", "both") for t in drawn)
    assert PromptSource("toyshapes:heldout:counting", seed=0).batch(0, 12) and set(
        PromptSource("toyshapes:heldout:counting", seed=0).pool
    ) == {"one square", "three triangles", "four triangles"}


def test_update_statistics_of_several_processes_combine_like_one():
    parts = [
        ({"loss/policy": 0.25, "ratio/min": 0.9, "ratio/max": 1.1, "clip_fraction": 0.5, "grad_norm": 2.0}, 1),
        ({"loss/policy": 0.75, "ratio/min": 0.8, "ratio/max": 1.05, "clip_fraction": 0.2, "grad_norm": 2.0}, 4),
    ]
    combined = combine_processes(parts)
    # Each process holds its share of the global loss; their mean is the loss of the whole batch.
    assert combined["loss/policy"] == pytest.approx(0.5)
    assert combined["ratio/min"] == 0.8 and combined["ratio/max"] == 1.1
    assert combined["clip_fraction"] == pytest.approx((0.5 * 1 + 0.2 * 4) / 5)  # a mean over 5 transitions
    assert combined["grad_norm"] == 2.0
    # A process without transitions contributes no keys and no weight.
    assert combine_processes([({}, 0), parts[1]])["clip_fraction"] == pytest.approx(0.2)


def test_tensorboard_logging_writes_event_files_with_the_metrics(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_run(tiny_dir, tmp_path / "run", "log_with=tensorboard"))
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    rewards = [r["reward/mean"] for r in metric_records(tmp_path / "run", skip_first=True)]
    logged = [e.value for e in accumulator.Scalars("reward/mean")]
    assert logged == pytest.approx(rewards)  # the same values metrics.jsonl holds, per iteration
    # the evaluation's sample grid, as an image at its iteration
    train(
        tiny_run(
            tiny_dir,
            tmp_path / "evaluated",
            "log_with=tensorboard",
            "eval_every=2",
            "eval_prompts=" + prompts_file(tmp_path),
        )
    )
    events = list((tmp_path / "evaluated" / "logs").rglob("events.out.tfevents.*"))
    images = EventAccumulator(str(events[0].parent), size_guidance={"images": 0}).Reload().Images("samples")
    assert [image.step for image in images] == [2]  # iteration 0 is written to metrics.jsonl only


def prompts_file(tmp_path) -> str:
    path = tmp_path / "eval_prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return str(path)


def test_unknown_tracker_fails_by_name():
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        build_config({}, ["log_with=tensorbord"])


def test_learning_rate_warm_up_and_cosine_are_applied_per_iteration(tiny_dir, tmp_path):
    train(tiny_run(tiny_dir, tmp_path / "run", "iterations=4", "lr_warmup=2", "lr_schedule=cosine"))
    records = metric_records(tmp_path / "run", skip_first=True)
    # warm-up 1/2, 2/2 of 1e-3, then the cosine from its start to its end point (10%) at the last iteration
    assert [r["lr"] for r in records] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi)))]
    )


def test_the_loop_raises_a_learnable_reward_over_an_untrained_control(tiny_dir, tmp_path):
    """The sign and plumbing of the whole loop: with the same prompts and noise, training raises
    mean brightness well above a run whose updates are negligible (lr 1e-12)."""

    def rewards(name, lr):
        config = tiny_run(
            tiny_dir, tmp_path / name, "iterations=12", "method.group_size=4", f"lr={lr}", "checkpoint_every=100"
        )
        train(config)
        return [r["reward/mean"] for r in metric_records(tmp_path / name, skip_first=True)]

    control, trained = rewards("control", 1e-12), rewards("trained", 3e-3)
    assert control[0] == pytest.approx(trained[0])  # the same first rollout: the difference is learning
    assert max(control) - min(control) < 0.03  # without learning the reward only wanders
    assert sum(trained[-4:]) / 4 > sum(control[-4:]) / 4 + 0.05


def test_invalid_rewards_are_imputed_from_their_groups_valid_scored_members():
    from flowrl.scoring import impute_group_means

    rewards = torch.tensor([1.0, 3.0, 0.0, 5.0, 0.0, 9.0])
    valid = torch.tensor([True, True, False, True, False, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    scored = torch.tensor([True, True, True, False, True, True])  # sample 3 is an unscored tree node
    # group 0: mean(1, 3) = 2; group 1: its only valid member is unscored, so 0; others unchanged
    assert impute_group_means(rewards, valid, groups, scored).tolist() == [1.0, 3.0, 2.0, 5.0, 0.0, 9.0]


@pytest.mark.parametrize(
    "precision,expected", [("bf16", torch.bfloat16), ("auto", torch.float32), ("no", torch.float32)]
)
def test_mixed_precision_bf16_runs_the_model_in_bf16_on_the_cpu_too(tiny_dir, tmp_path, precision, expected):
    trainer = Trainer(tiny_run(tiny_dir, tmp_path / precision, f"mixed_precision={precision}"))
    seen = []
    first_linear = next(m for m in trainer.policy.transformer.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    cond = trainer.policy.encode(["a red circle", "a blue square"])
    x, sigma = torch.randn(2, *trainer.policy.sample_shape), torch.full((2,), 0.5)
    v = trainer.velocity_fn(cond)(x, sigma, torch.tensor([0, 1]))
    assert seen and set(seen) == {expected}
    assert v.dtype == torch.float32  # the solver layer always gets float32 velocities
    plain = trainer.policy.velocity(x, sigma, cond, trainer.config.guidance)
    tolerance = 0.1 if expected == torch.bfloat16 else 1e-6
    assert (v - plain).norm() / plain.norm() < tolerance


def test_a_bf16_run_on_the_cpu_trains_with_on_policy_ratios(tiny_dir, tmp_path):
    train(tiny_run(tiny_dir, tmp_path / "run", "mixed_precision=bf16", "iterations=1"))
    record = metric_records(tmp_path / "run")[1]
    assert math.isfinite(record["loss/policy"])
    # rollout and re-scoring both run in bf16, in different batches: equal up to bf16 rounding
    assert record["ratio/mean"] == pytest.approx(1.0, abs=1e-2)


def test_the_moving_average_is_the_closed_form_and_swaps_back():
    from flowrl.adapters import Ema, warmed_up_decay

    network = torch.nn.Linear(2, 1, bias=False)
    params = dict(network.named_parameters())
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = Ema(params, decay=0.9)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[3.0, 6.0]]))
    average.update(params, warmed_up_decay(1000, 0.9, warmup=True))  # past the short early window: 0.9
    expected = 0.9 * torch.tensor([[1.0, 2.0]]) + 0.1 * torch.tensor([[3.0, 6.0]])
    with average.swapped_in(params):
        assert torch.allclose(network.weight, expected)
    assert torch.equal(network.weight, torch.tensor([[3.0, 6.0]]))
    average.update(params, warmed_up_decay(0, 0.9, warmup=True))  # at the first step the average is short: 1/10
    assert torch.allclose(average.shadow["weight"], 0.1 * expected + 0.9 * torch.tensor([[3.0, 6.0]]))


def test_the_ema_warm_up_is_the_papers_schedule():
    from flowrl.adapters import warmed_up_decay

    assert [warmed_up_decay(k, 0.9, True) for k in (1, 8, 80, 1000)] == pytest.approx([2 / 11, 0.5, 0.9, 0.9])
    assert warmed_up_decay(1, 0.9, False) == 0.9


def test_a_warmed_up_ema_every_other_step_is_the_hand_computed_average(tiny_dir, tmp_path):
    """ema_every=2, ema_warmup: the average moves at optimizer steps 2 and 4 only, with decays 3/12
    and 5/14; the step count is checkpointed, so a run resumed after each iteration agrees with a
    straight one."""
    overrides = ("checkpoint_every=1", "ema=0.9", "ema_every=2", "ema_warmup=true", "lr=3e-3")

    def state(name, iterations):
        train(tiny_run(tiny_dir, tmp_path / name, f"iterations={iterations}", *overrides))
        directory = tmp_path / name / "checkpoint"
        return (
            load_file(str(directory / "trainable.safetensors")),
            load_file(str(directory / "ema.safetensors")),
            torch.load(directory / "state.pt", weights_only=False),
        )

    initial = {k: v.detach() for k, v in load_toy(tiny_dir).transformer.named_parameters()}
    w1, ema1, s1 = state("resumed", 1)
    assert s1["optimizer_steps"] == 1 and all(torch.equal(ema1[k], initial[k]) for k in ema1)  # no update at step 1
    w2, ema2, _ = state("resumed", 2)
    for k in ema2:
        torch.testing.assert_close(ema2[k], 0.25 * initial[k] + 0.75 * w2[k], rtol=1e-6, atol=1e-7)
    _, ema3, _ = state("resumed", 3)
    assert all(torch.equal(ema3[k], ema2[k]) for k in ema2)
    w4, ema4, s4 = state("resumed", 4)
    for k in ema4:
        torch.testing.assert_close(ema4[k], 5 / 14 * ema2[k] + 9 / 14 * w4[k], rtol=1e-6, atol=1e-7)
    straight_w, straight_ema, _ = state("straight", 4)
    assert s4["optimizer_steps"] == 4 and all(
        torch.equal(straight_ema[k], ema4[k]) and torch.equal(straight_w[k], w4[k]) for k in ema4
    )


def test_raw_weights_export_equals_a_run_without_ema(tiny_dir, tmp_path):
    # The EMA does not change training, so a run with ema=0 is an independent reference for the raw weights.
    from flowrl.benchmarks.raw_weights import export_raw_weights

    train(tiny_run(tiny_dir, tmp_path / "ema", "lora_rank=4", "ema=0.5"))
    train(tiny_run(tiny_dir, tmp_path / "plain", "lora_rank=4", "ema=0"))
    raw = load_file(str(export_raw_weights(tmp_path / "ema", tmp_path / "raw") / "model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    averaged = load_file(str(tmp_path / "ema" / "final" / "model.safetensors"))
    assert raw.keys() == plain.keys()
    for name in raw:
        torch.testing.assert_close(raw[name], plain[name])
    assert any(not torch.equal(raw[n], averaged[n]) for n in raw)  # the EMA export is a different model
    with pytest.raises(ValueError, match="is not a run directory"):
        export_raw_weights(tmp_path / "nothing", tmp_path / "raw2")
