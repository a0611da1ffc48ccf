"""Two CPU processes (gloo, through `accelerate launch`) train like one process holding the whole
batch, and their replicas stay identical."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, metric_records, tiny_model
from flowrl.policies.toy import save_toy

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "workers" / "train_and_dump.py"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# Weights of two runs that differ only in how sums are split across processes: Adam turns the
# roundoff of a near-zero gradient into a step of up to lr, so an element may differ by a few
# 1e-6 after three lr 1e-3 steps (a thousandth of their movement; seen since the guided
# velocity's gradient also flows through the unconditional half).
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-5}


def overrides(tiny_dir, out, *extra):
    # 3 prompts x group 2 = 6 samples, 3 per process: prompt 1's group is split across the two.
    return [
        f"policy={tiny_dir}",
        f"out={out}",
        "iterations=3",
        "prompts_per_iteration=3",
        "method=flow_grpo",
        "method.num_steps=3",
        "method.group_size=2",
        "method.shift=1.0",
        "method.std_scope=group",
        "eval_every=0",
        "checkpoint_every=10",
        "lr=1e-3",
        # A pointwise and a pairwise term: the split group's pair is judged across processes.
        "threads=1",
        "reward=conftest:brightness_reward+0.5*pairwise:conftest:brightness_reward",
        "reward_options={pairwise:conftest:brightness_reward: {temperature: 0.01}}",
        "drop_zero_variance=false",
        *extra,
    ]


def launch(processes, args, tmp_path, launcher=("--multi_gpu",)):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )

    def run():
        if processes == 1:
            command = [sys.executable, str(WORKER), *args]
        else:
            # --multi_gpu picks accelerate's torchrun launcher; without a GPU the processes join over gloo.
            command = [
                ACCELERATE,
                "launch",
                *launcher,
                "--num_processes",
                str(processes),
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                "--main_process_port",
                str(free_port()),
                str(WORKER),
                *args,
            ]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    saved = None
    if processes > 1:  # keep the starting state, for the one relaunch below
        out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("out=")))
        saved = tmp_path / f"{out.name}.before_launch"
        shutil.rmtree(saved, ignore_errors=True)
        if out.is_dir():
            shutil.copytree(out, saved)
    done = run()
    if saved is not None and done.returncode != 0 and "SIGABRT" in done.stderr:
        # Rarely (2 of about 150 launches on 2 loaded cores; not reproducible on demand) gloo aborts
        # a worker in C++ and its peer reports "Connection closed by peer". Once more from the same
        # starting state; any other failure, or a second abort, fails the test.
        warnings.warn(f"a worker aborted (SIGABRT); launching once more: {abort_lines(done.stderr)}", stacklevel=2)
        shutil.rmtree(out, ignore_errors=True)
        if saved.is_dir():
            shutil.copytree(saved, out)
        done = run()
    assert done.returncode == 0, abort_lines(done.stderr) + "\n...\n" + done.stderr[-3000:]


def abort_lines(stderr: str) -> str:
    """The lines that say which process died and how (the tail alone shows only rank 0's side)."""
    keys = ("terminate called", "[rank1]", "Error", "exitcode")
    return "\n".join(line for line in stderr.splitlines() if any(k in line for k in keys))[-3000:]


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
@pytest.mark.parametrize(
    "objective",
    [
        [],
        # flow-matching points noised per root (seeds independent of the process), rollouts from the EMA
        ["objective=nft", "objective.sampler=ema", "ema=0.5"],
        ["objective=nft", "objective.sampler=old", "objective.old_decay=[0.3,0.5,0]"],
    ],
    ids=["sde", "nft-ema", "nft-old"],
)
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, objective):
    tiny_dir = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    launch(1, overrides(tiny_dir, tmp_path / "one", *objective), tmp_path)
    launch(2, overrides(tiny_dir, tmp_path / "two", *objective), tmp_path)

    rank0 = load_file(str(tmp_path / "two" / "params_rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "params_rank1.safetensors"))
    single = load_file(str(tmp_path / "one" / "params_rank0.safetensors"))
    initial = tiny_model().transformer.state_dict()
    assert rank0.keys() == rank1.keys() == single.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # replicas never drift apart
    assert any(not torch.equal(single[k], initial[k]) for k in single)  # training moved the weights
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], **WEIGHT_TOL)

    one, two = metric_records(tmp_path / "one"), metric_records(tmp_path / "two")
    assert [r["iteration"] for r in two] == [r["iteration"] for r in one] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        # Rewards and advantages are statistics of the global batch, gathered from both processes.
        assert b["samples"] == a["samples"] == 6 and b["transitions/global"] == a["transitions/global"]
        assert (
            b["reward/pairwise:conftest:brightness_reward/mean"]
            == a["reward/pairwise:conftest:brightness_reward/mean"]
            == pytest.approx(0.5)
        )
        for key in (
            "reward/mean",
            "reward/std",
            "reward/conftest:brightness_reward/mean",
            "advantage/mean",
            "advantage/std",
        ):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_a_batch_that_does_not_split_evenly_fails_by_name():
    from flowrl.samplers.shard import shard_roots

    with pytest.raises(ValueError, match="multiple of 2"):
        shard_roots(3, 3, 2, 0)


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_accelerates_fsdp_launch_without_cuda_fails_before_any_model_loads(tmp_path):
    # Without CUDA accelerate's --use_fsdp does not shard; the launch must stop, not train N unsharded copies.
    out = tmp_path / "run"
    command = [
        ACCELERATE,
        "launch",
        "--use_fsdp",
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
        "toy",
        f"out={out}",
        "iterations=1",
        "threads=1",
    ]
    done = subprocess.run(
        command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode != 0
    assert "not supported on cpu" in done.stderr  # accelerate's own refusal, before our trainer starts
    assert not out.exists()  # failed before the run directory or any model


def test_megatron_is_named_in_the_refusal():
    from flowrl.launch import refuse_sharded_backends

    refuse_sharded_backends(
        {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_USE_DEEPSPEED": "true"}
    )  # FSDP, DeepSpeed and data parallel: fine
    with pytest.raises(ValueError, match="launched with Megatron-LM, which .*use FSDP.*DeepSpeed ZeRO 1-2"):
        refuse_sharded_backends({"ACCELERATE_USE_MEGATRON_LM": "TRUE"})


@pytest.mark.skipif(not DEEPSPEED, reason="DeepSpeed is not installed")
def test_a_deepspeed_launch_is_adopted_or_refused_by_name_before_any_model_loads(tmp_path):
    from flowrl.config import build_config
    from flowrl.launch import adopt_launch

    config = build_config({}, [])
    launched = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert adopt_launch(config, launched)[0].zero_stage == 2  # accelerate's default stage
    assert adopt_launch(
        config, {**launched, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1", "ACCELERATE_GRADIENT_CLIPPING": "1.0"}
    ) == (build_config({}, ["zero_stage=1"]), None)
    assert adopt_launch(config, {**launched, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"})[1] == "cpu"
    assert adopt_launch(config, {})[0].zero_stage == 0
    with pytest.raises(ValueError, match="ZeRO stage 3; flowrl drives stages 1 and 2.*fsdp=true"):
        adopt_launch(config, {**launched, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    with pytest.raises(ValueError, match="zero_stage=1, but accelerate was launched with DeepSpeed ZeRO stage 2"):
        adopt_launch(build_config({}, ["zero_stage=1"]), launched)
    with pytest.raises(ValueError, match="gradient clipping 0.5, but config key max_grad_norm=1.0"):
        adopt_launch(config, {**launched, "ACCELERATE_GRADIENT_CLIPPING": "0.5"})
    with pytest.raises(ValueError, match="offload_param_device='cpu' needs ZeRO stage 3"):
        adopt_launch(config, {**launched, "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"})
    # A DeepSpeed config file: its stage and offload device are read; sections flowrl owns are refused.
    file = tmp_path / "ds.json"
    file.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}},
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
            }
        )
    )
    assert adopt_launch(config, {**launched, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(file)}) == (
        build_config({}, ["zero_stage=1"]),
        "cpu",
    )
    for section, message in [
        ({"optimizer": {"type": "Adam"}}, "'optimizer' section is not supported"),
        ({"fp16": {"enabled": True}}, "fp16.enabled=true is not supported"),
    ]:
        file.write_text(json.dumps({"zero_optimization": {"stage": 2}, **section}))
        with pytest.raises(ValueError, match=message):
            adopt_launch(config, {**launched, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(file)})
    with pytest.raises(ValueError, match="zero_stage=3: expected 0 .off., 1 or 2; stage 3 partitions the weights"):
        build_config({}, ["zero_stage=3"])
    with pytest.raises(ValueError, match="zero_stage=2: fsdp=true already shards"):
        build_config({}, ["zero_stage=2", "fsdp=true"])
    with pytest.raises(ValueError, match="objective=.matching.: zero_stage supports objective=sde only"):
        build_config({}, ["zero_stage=2", "objective=matching"])
    from flowrl.sharding import check_sharding_world

    with pytest.raises(ValueError, match="zero_stage shards across processes, but this run has 1; launch 2 or more"):
        check_sharding_world(1, {}, "zero_stage")


def test_fsdp_options_are_checked_before_any_model_loads(tmp_path):
    from flowrl.config import build_config
    from flowrl.sharding import check_sharding_world

    with pytest.raises(ValueError, match="objective=.matching.: fsdp=true supports objective=sde only"):
        build_config({}, ["fsdp=true", "objective=matching"])
    with pytest.raises(ValueError, match="micro_batch=512: with fsdp=true must not exceed max_batch=256"):
        build_config({}, ["fsdp=true", "micro_batch=512"])
    with pytest.raises(ValueError, match="this run has 1; launch 2 or more"):
        check_sharding_world(1, {})
    with pytest.raises(ValueError, match="2 processes were launched but they did not join.*--multi_gpu and fsdp=true"):
        check_sharding_world(1, {"WORLD_SIZE": "2"})
    check_sharding_world(2, {"WORLD_SIZE": "2"})


def test_accelerates_reshard_setting_is_read_in_both_of_its_spellings():
    from flowrl.sharding import reshard_after_forward

    assert reshard_after_forward({}) is True  # FSDP2's default
    assert [
        reshard_after_forward({"FSDP_RESHARD_AFTER_FORWARD": v})
        for v in ("true", "false", "FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
    ] == [True, False, True, False, False, True]


def fsdp_overrides(tiny_dir, out, tmp_path, *extra):
    """Two prompts, one of whose groups always ties and leaves the update: the processes hold
    different numbers of transitions, and one micro-batch per transition makes that show."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    return overrides(
        tiny_dir,
        out,
        f"prompts={prompts}",
        "reward=conftest:brightness_tied_for_squares",
        "reward_options={}",
        "drop_zero_variance=true",
        "micro_batch=1",
        "ema=0.5",
        "seed=3",
        *extra,
    )  # seed 3: uneven in iteration 1


def local(out, rank):
    return json.loads((out / f"local_rank{rank}.json").read_text())


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_fsdp_shards_the_weights_and_trains_like_one_process(tmp_path):
    tiny_dir = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    launch(1, fsdp_overrides(tiny_dir, tmp_path / "one", tmp_path), tmp_path)
    launch(2, fsdp_overrides(tiny_dir, tmp_path / "two", tmp_path, "fsdp=true"), tmp_path)

    single = load_file(str(tmp_path / "one" / "params_rank0.safetensors"))
    rank0 = load_file(str(tmp_path / "two" / "params_rank0.safetensors"))
    initial = tiny_model().transformer.state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single)
    assert_equal_up_to_roundoff(rank0, single, initial)
    # Each process held about half of every weight matrix, and no process held all of it.
    held = [local(tmp_path / "two", r)["numel"] for r in (0, 1)]
    for name, tensor in single.items():
        assert held[0][name] + held[1][name] == tensor.numel()
        if tensor.shape[0] > 1:
            assert max(held[0][name], held[1][name]) < tensor.numel(), name
    # The tied groups left the processes uneven, and the one with fewer micro-batches kept in step.
    assert local(tmp_path / "two", 0)["idle_passes"] + local(tmp_path / "two", 1)["idle_passes"]
    one, two = metric_records(tmp_path / "one"), metric_records(tmp_path / "two")
    assert any(r["zero_variance_prompts"] > 0 for r in one[1:])
    for a, b in zip(one[1:], two[1:]):
        for key in ("reward/mean", "advantage/std", "transitions/global", "loss/policy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # The exported model (EMA weights, gathered from the shards) equals the one-process export.
    exported = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    reference = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    assert exported.keys() == reference.keys()
    assert_equal_up_to_roundoff(exported, reference, tiny_model().state_dict())


@pytest.mark.skipif(ACCELERATE is None or not DEEPSPEED, reason="needs the accelerate launcher and DeepSpeed")
def test_deepspeed_zero_partitions_the_optimizer_state_and_trains_like_one_process(tmp_path):
    tiny_dir = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    launch(1, fsdp_overrides(tiny_dir, tmp_path / "one", tmp_path), tmp_path)
    # accelerate's own DeepSpeed launch (it joins CPU processes over gloo): the trainer adopts its stage.
    launch(
        2,
        fsdp_overrides(tiny_dir, tmp_path / "two", tmp_path),
        tmp_path,
        launcher=("--use_deepspeed", "--zero_stage", "2"),
    )

    single = load_file(str(tmp_path / "one" / "params_rank0.safetensors"))
    rank0 = load_file(str(tmp_path / "two" / "params_rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "params_rank1.safetensors"))
    initial = tiny_model().transformer.state_dict()
    assert any(not torch.equal(single[k], initial[k]) for k in single)
    assert_equal_up_to_roundoff(rank0, single, initial)
    for k in rank0:  # the weights stay whole and identical on every process
        assert torch.equal(rank0[k], rank1[k]), k
    # Each process held about half of the Adam state (its partition, padded to equal sizes).
    total = sum(t.numel() for t in single.values())
    held = [local(tmp_path / "two", r)["optimizer_numel"] for r in (0, 1)]
    assert all(h < total for h in held) and total <= sum(held) <= total + 2
    # The tied groups left the processes uneven, and the one with fewer micro-batches kept in step.
    assert local(tmp_path / "two", 0)["idle_passes"] + local(tmp_path / "two", 1)["idle_passes"]
    one, two = metric_records(tmp_path / "one"), metric_records(tmp_path / "two")
    for a, b in zip(one[1:], two[1:]):
        for key in ("reward/mean", "advantage/std", "transitions/global", "loss/policy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    exported = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    reference = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    assert exported.keys() == reference.keys()
    assert_equal_up_to_roundoff(exported, reference, tiny_model().state_dict())


def assert_equal_up_to_roundoff(weights: dict, reference: dict, initial: dict) -> None:
    """Each tensor of `weights` equals `reference` within 3% of how far training moved it.

    Each process samples 3 of the 6 rollouts, and a CPU linear layer rounds a row differently in
    a batch of fewer than 4 rows (the timestep embedder's), so the two runs differ by roundoff
    that Adam's steps carry into the weights; a wrong average or a lost micro-batch moves them
    by the size of the update itself.
    """
    for k, ref in reference.items():
        update = float((ref.float() - initial[k].float()).abs().max())
        assert float((weights[k].float() - ref.float()).abs().max()) <= 3e-2 * update + 1e-7, k


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
@pytest.mark.parametrize(
    "sharding, launcher",
    [
        (("fsdp=true",), ("--multi_gpu",)),
        # accelerate's DeepSpeed launch: ZeRO 1 with the AdamW state offloaded to the CPU.
        pytest.param(
            (),
            ("--use_deepspeed", "--zero_stage", "1", "--offload_optimizer_device", "cpu"),
            marks=pytest.mark.skipif(not DEEPSPEED, reason="DeepSpeed is not installed"),
        ),
    ],
    ids=["fsdp", "zero1-offload"],
)
def test_sharded_and_unsharded_checkpoints_resume_each_other(tmp_path, sharding, launcher):
    # LoRA with a KL to the reference (adapters disabled: one more forward per micro-batch).
    tiny_dir = str(save_toy(tiny_model(), tmp_path / "tiny", dtype=torch.float32))
    lora = ("lora_rank=4", "beta=0.5", "checkpoint_every=1")
    a, b = tmp_path / "a", tmp_path / "b"
    launch(2, fsdp_overrides(tiny_dir, a, tmp_path, *lora, "iterations=2", *sharding), tmp_path, launcher)
    launch(1, fsdp_overrides(tiny_dir, b, tmp_path, *lora, "iterations=2"), tmp_path)
    first_a, first_b = (
        load_file(str(a / "final" / "model.safetensors")),
        load_file(str(b / "final" / "model.safetensors")),
    )
    for k in first_b:  # the LoRA-merged export of the sharded run
        torch.testing.assert_close(first_a[k], first_b[k], **WEIGHT_TOL)
    # Swap: the sharded run's checkpoint continues unsharded, and the other way round.
    launch(1, fsdp_overrides(tiny_dir, a, tmp_path, *lora, "iterations=3"), tmp_path)
    launch(2, fsdp_overrides(tiny_dir, b, tmp_path, *lora, "iterations=3", *sharding), tmp_path, launcher)
    # Both equal a run that was never interrupted (weights, optimizer and EMA state all carried over).
    c = tmp_path / "c"
    launch(1, fsdp_overrides(tiny_dir, c, tmp_path, *lora, "iterations=3"), tmp_path)
    params_c = load_file(str(c / "params_rank0.safetensors"))
    for run in (a, b):
        params = load_file(str(run / "params_rank0.safetensors"))
        assert params.keys() == params_c.keys()
        for k in params_c:
            torch.testing.assert_close(params[k], params_c[k], **WEIGHT_TOL)
        final = load_file(str(run / "final" / "model.safetensors"))
        for k in final:
            torch.testing.assert_close(final[k], load_file(str(c / "final" / "model.safetensors"))[k], **WEIGHT_TOL)
    if "--use_deepspeed" in launcher:  # the launch's ZeRO ran: each process held part of the Adam state
        assert 0 < local(b, 0)["optimizer_numel"] < sum(t.numel() for t in params_c.values())
    assert [r["iteration"] for r in metric_records(a)] == [r["iteration"] for r in metric_records(b)] == [0, 1, 2, 3]
    kl = metric_records(a)[3]["loss/kl"]
    assert kl > 0 and kl == pytest.approx(metric_records(c)[3]["loss/kl"], rel=1e-3, abs=1e-9)


def text_overrides(lm_dir, out, *extra):
    """4 prompts x 4 completions, 2 prompts per process; uneven kept rows once groups tie."""
    return [
        f"policy={lm_dir}",
        f"out={out}",
        "method=grpo",
        "objective=tokens",
        "prompts=task:add2x1",
        "reward=length",
        "reward_options={length: {target: 2}}",
        "method.num_generations=4",
        "method.temperature=2.0",
        "method.max_completion_length=4",
        "iterations=3",
        "prompts_per_iteration=4",
        "micro_batch=2",
        "lr=1e-3",
        "beta=0.04",
        "eval_every=0",
        "checkpoint_every=10",
        "threads=1",
        *extra,
    ]


@pytest.mark.skipif(ACCELERATE is None or not DEEPSPEED, reason="needs the accelerate launcher and DeepSpeed")
def test_text_runs_train_alike_data_parallel_under_fsdp_and_under_zero(tmp_path):
    from flowrl.llm.tiny import save_tiny

    lm_dir = str(save_tiny(tmp_path / "lm"))
    launch(2, text_overrides(lm_dir, tmp_path / "dp"), tmp_path)
    launch(2, text_overrides(lm_dir, tmp_path / "fsdp", "fsdp=true"), tmp_path)
    launch(2, text_overrides(lm_dir, tmp_path / "zero"), tmp_path, launcher=("--use_deepspeed", "--zero_stage", "2"))
    dp = load_file(str(tmp_path / "dp" / "params_rank0.safetensors"))
    initial = {k: v for k, v in load_file(str(Path(lm_dir) / "model.safetensors")).items() if k in dp}
    assert any(not torch.equal(dp[k], initial[k]) for k in initial)
    for run in ("fsdp", "zero"):
        weights = load_file(str(tmp_path / run / "params_rank0.safetensors"))
        assert_equal_up_to_roundoff(weights, dp, initial)
        for a, b in zip(metric_records(tmp_path / "dp")[1:], metric_records(tmp_path / run)[1:]):
            for key in ("reward/mean", "transitions/global", "loss/policy", "loss/kl"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (run, key)
    held = [local(tmp_path / "fsdp", r)["numel"] for r in (0, 1)]
    assert all(held[0][n] + held[1][n] == t.numel() for n, t in dp.items())  # each process held a part


@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate launcher is not installed")
def test_a_sharded_text_run_with_lora_exports_a_plain_model(tmp_path):
    from flowrl.llm.policy import load_text_policy
    from flowrl.llm.tiny import save_tiny

    lm_dir = str(save_tiny(tmp_path / "lm"))
    extra = ("fsdp=true", "lora_rank=4", "lora_targets=[q_proj,v_proj]", "iterations=2")
    launch(2, text_overrides(lm_dir, tmp_path / "lora", *extra), tmp_path)
    exported = load_text_policy(str(tmp_path / "lora" / "final")).network.state_dict()
    base = load_text_policy(lm_dir).network.state_dict()
    assert exported.keys() == base.keys()  # LoRA merged into plain weights
    changed = [k for k in base if not torch.equal(exported[k], base[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
