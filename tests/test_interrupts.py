"""Ctrl-C and SIGTERM end a training or pretraining run after its current step with a checkpoint
(a scheduler's preemption loses no finished work), and a resume continues exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import free_port, metric_records, metric_values, same_checkpoint_weights, tiny_model
from flowrl.config import build_config
from flowrl.interrupts import StopRequests, exit_code
from flowrl.policies.toy import save_toy
from flowrl.toy_pretraining import build_parser, pretrain
from flowrl.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt (Python's own handler) during the test, whatever this process
    inherited: a suite started in the background of a script (`cmd &` without job control) has
    SIGINT ignored, and a second Ctrl-C then rightly did nothing ("DID NOT RAISE KeyboardInterrupt")."""
    inherited = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def counted(number: int) -> threading.Semaphore:
    """Wrap the Python handler now installed for signal `number`: each run of it releases the
    returned semaphore once it has returned."""
    handler = signal.getsignal(number)
    assert callable(handler), f"no Python handler for {signal.Signals(number).name}: {handler}"
    runs = threading.Semaphore(0)

    def handle_and_count(signum, frame):
        handler(signum, frame)
        runs.release()

    signal.signal(number, handle_and_count)
    return runs


def signal_and_wait(number: int, runs: threading.Semaphore) -> None:
    """Send signal `number` to this thread and wait until its handler has run (a wait on the event,
    not on the clock: raise_signal delivers to the calling thread and runs the Python handler
    before it returns, so this never waits on success; the bound only ends a failing test)."""
    signal.raise_signal(number)
    assert runs.acquire(timeout=60), f"the {signal.Signals(number).name} handler did not run"


def test_the_first_signal_asks_the_second_ctrl_c_interrupts_and_handlers_come_back(ctrl_c_raises):
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with StopRequests("step") as stop:
        assert not stop.requested and exit_code(stop.signal) == 0
        sigterms = counted(signal.SIGTERM)  # on top of the handler StopRequests installed
        signal_and_wait(signal.SIGTERM, sigterms)
        assert stop.signal == signal.SIGTERM and exit_code(stop.signal) == 143
        signal_and_wait(signal.SIGTERM, sigterms)  # a repeated SIGTERM only repeats the request
        assert stop.signal == signal.SIGTERM and exit_code(stop.signal) == 143
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the handler from before raises before raise_signal returns
    assert {number: signal.getsignal(number) for number in before} == before
    with StopRequests("step") as stop:
        signal_and_wait(signal.SIGINT, counted(signal.SIGINT))
        assert stop.signal == signal.SIGINT and exit_code(stop.signal) == 130
    assert {number: signal.getsignal(number) for number in before} == before


def records_so_far(out):
    """The records a running run has written so far: none while its metrics.jsonl is missing or its
    last line is half written."""
    try:
        return metric_records(out)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def wait_for(condition, process, seconds=120.0):
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_ctrl_c_ends_training_after_the_iteration_with_a_checkpoint_and_the_resume_is_exact(tmp_path, capsys):
    tiny = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("method: flow_grpo\n")
    common = [
        f"policy={tiny}",
        "prompts_per_iteration=2",
        "method.num_steps=4",
        "method.group_size=3",
        "method.shift=1.0",
        "eval_every=0",
        "checkpoint_every=1000",
        "lr=1e-3",
        "threads=1",
        "reward=conftest:brightness_reward",
        "minutes=0",
    ]
    out = tmp_path / "stopped"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    run = subprocess.Popen(
        [sys.executable, "-m", "flowrl", "train", str(recipe), *common, f"out={out}", "iterations=1000"],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(records_so_far(out)) >= 3, run)  # iteration 0 and two trained
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert (
        f"training flow_grpo on {tiny}, 1000 iterations, into {out} (Ctrl-C stops after the current iteration, with a checkpoint)"
        in stderr
    )
    assert "SIGINT: stopping after this iteration with a checkpoint" in stderr
    stopped_at = metric_values(out, "iteration")[-1]
    assert 2 <= stopped_at < 1000
    assert (
        f"done: {stopped_at} iterations in {out} (stopped by SIGINT with a checkpoint; rerun the same command to continue)"
        in stdout
    )
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["iteration"] == stopped_at

    # Resumed for one more iteration, it equals a run of that length that was never interrupted.
    train(build_config({}, common + [f"out={out}", f"iterations={stopped_at + 1}"]))
    assert (
        f"training flow_grpo on {tiny}, from iteration {stopped_at} of {stopped_at + 1}, into {out} ("
        in capsys.readouterr().err
    )
    train(build_config({}, common + [f"out={tmp_path / 'straight'}", f"iterations={stopped_at + 1}"]))
    assert same_checkpoint_weights(out, tmp_path / "straight")
    rewards = metric_values(out, "reward/mean")
    assert rewards == metric_values(tmp_path / "straight", "reward/mean") and len(rewards) == stopped_at + 2


def test_sigterm_ends_pretraining_after_the_step_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    run = subprocess.Popen(
        [
            sys.executable,
            "scripts/pretrain_toy.py",
            "--out",
            str(out),
            "--steps",
            "100000",
            "--batch",
            "4",
            "--layers",
            "1",
            "--heads",
            "1",
            "--warmup",
            "2",
            "--checkpoint-every",
            "100000",
            "--threads",
            "1",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (out / "log.jsonl").is_file() and (out / "log.jsonl").read_text(), run)  # step 0 logged
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 100000
    assert (
        f"stopped by SIGTERM at step {step} of 100000, with a checkpoint; rerun the same command to continue" in stdout
    )
    assert (out / "ema" / "model.safetensors").is_file()


def test_an_unfinished_pretraining_run_is_not_shipped(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "shipped"
    monkeypatch.setattr("flowrl.toy_pretraining.SHIPPED_DIR", shipped)
    arguments = [
        "--out",
        str(tmp_path / "run"),
        "--batch",
        "4",
        "--layers",
        "1",
        "--heads",
        "1",
        "--warmup",
        "2",
        "--ship",
    ]
    pretrain(
        build_parser().parse_args([*arguments, "--steps", "3", "--minutes", "1e-9"])
    )  # out of time after the first step
    assert "not shipped: step 1 of 3" in capsys.readouterr().out and not shipped.exists()
    pretrain(build_parser().parse_args([*arguments, "--steps", "3"]))  # resumed to the end: shipped
    assert (shipped / "model.safetensors").is_file()


@pytest.mark.skipif(
    shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
    reason="the accelerate launcher is not installed",
)
def test_sigterm_to_an_accelerate_launch_stops_every_process_at_one_iteration_with_a_checkpoint(tmp_path):
    # As a scheduler preempting a job: the launcher (torchrun) passes the signal to both workers,
    # which agree on the iteration to stop at, checkpoint it and exit; the launch reports 143.
    tiny = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("method: flow_grpo\n")
    out = tmp_path / "run"
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    command = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "flowrl",
        "train",
        str(recipe),
        f"policy={tiny}",
        f"out={out}",
        "iterations=1000",
        "prompts_per_iteration=2",
        "method.num_steps=4",
        "method.group_size=3",
        "method.shift=1.0",
        "eval_every=0",
        "checkpoint_every=1000",
        "threads=1",
        "reward=conftest:brightness_reward",
        "minutes=0",
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: len(records_so_far(out)) >= 3, run)
    os.killpg(run.pid, signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr[-3000:]
    assert stderr.count("SIGTERM: stopping after this iteration with a checkpoint") == 2  # one line per worker
    stopped_at = metric_values(out, "iteration")[-1]
    assert stopped_at >= 2 and f"done: {stopped_at} iterations" in stdout
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["iteration"] == stopped_at
