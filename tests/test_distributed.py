"""Two CPU processes (gloo, through `accelerate launch`) train like one process holding the whole
batch, and their replicas stay identical."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowrl.policies.toy import save_toy

from conftest import tiny_model

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "workers" / "train_and_dump.py"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")


def overrides(tiny_dir, out, *extra):
    # 3 prompts x group 2 = 6 samples, 3 per process: prompt 1's group is split across the two.
    return [
        f"policy={tiny_dir}", f"out={out}", "iterations=3", "prompts_per_iteration=3", "method=flow_grpo", "method.num_steps=3",
        "method.group_size=2", "method.shift=1.0", "method.std_scope=group", "eval_every=0", "checkpoint_every=10", "lr=1e-3",
        # A pointwise and a pairwise term: the split group's pair is judged across processes.
        "threads=1", "reward=conftest:brightness_reward+0.5*pairwise:conftest:brightness_reward", "reward_options={pairwise:conftest:brightness_reward: {temperature: 0.01}}",
        "drop_zero_variance=false", *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes, args, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    if processes == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        # --multi_gpu picks accelerate's torchrun launcher; without a GPU the processes join over gloo.
        command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(WORKER), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    tiny_dir = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    launch(1, overrides(tiny_dir, tmp_path / "one"), tmp_path)
    launch(2, overrides(tiny_dir, tmp_path / "two"), tmp_path)

    rank0 = load_file(str(tmp_path / "two" / "params_rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "params_rank1.safetensors"))
    single = load_file(str(tmp_path / "one" / "params_rank0.safetensors"))
    initial = tiny_model().transformer.state_dict()
    assert rank0.keys() == rank1.keys() == single.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # replicas never drift apart
    assert any(not torch.equal(single[k], initial[k]) for k in single)  # training moved the weights
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-6)

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["iteration"] for r in two] == [r["iteration"] for r in one] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        # Rewards and advantages are statistics of the global batch, gathered from both processes.
        assert b["samples"] == a["samples"] == 6 and b["transitions/global"] == a["transitions/global"]
        assert b["reward/pairwise:conftest:brightness_reward/mean"] == a["reward/pairwise:conftest:brightness_reward/mean"] == pytest.approx(0.5)
        for key in ("reward/mean", "reward/std", "reward/conftest:brightness_reward/mean", "advantage/mean", "advantage/std"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_a_batch_that_does_not_split_evenly_fails_by_name():
    from samplers.shard import shard_roots

    with pytest.raises(ValueError, match="multiple of 2"):
        shard_roots(3, 3, 2, 0)


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_a_sharded_launch_is_refused_before_any_model_loads(tmp_path):
    # accelerate's own FSDP launch; the trainer would otherwise run unsharded without saying so.
    out = tmp_path / "run"
    command = [ACCELERATE, "launch", "--use_fsdp", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "flowrl", "train", "toy", f"out={out}", "iterations=1", "threads=1"]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert "launched with FSDP, which flowrl does not support yet" in done.stderr
    assert "--multi_gpu" in done.stderr  # says what to launch instead
    assert not out.exists()  # failed before the run directory or any model


def test_deepspeed_and_fsdp_flags_are_named_in_the_refusal():
    from flowrl.trainer import refuse_sharded_backends

    refuse_sharded_backends({"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_DEEPSPEED": "False"})  # data parallel: fine
    with pytest.raises(ValueError, match="launched with DeepSpeed and FSDP, which"):
        refuse_sharded_backends({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_FSDP": "TRUE"})
