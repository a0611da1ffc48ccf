"""Shared fixtures: tiny toy models built from configs, nothing downloaded."""

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowrl.benchmarks.toyshapes.prompts import vocabulary
from flowrl.config import build_config
from flowrl.policies.toy import ToyConfig, ToyModel, ToyPolicy, save_toy

# The methods the first plan named, and small settings of each for rollouts of the solver layer
# alone (tests/test_methods.py, tests/test_shard.py).
MISSION = [
    "flow_grpo",
    "dance_grpo",
    "mix_grpo",
    "mix_grpo_flash",
    "branch_grpo",
    "branch_grpo_mix",
    "tree_rpo",
    "tempflow_grpo",
    "g2rpo",
]

SMALL = {
    "flow_grpo": dict(num_steps=6, group_size=3),
    "dance_grpo": dict(num_steps=6, group_size=3),
    "mix_grpo": dict(num_steps=6, group_size=3, window=2),
    "mix_grpo_flash": dict(num_steps=8, group_size=3, window=2),
    "branch_grpo": dict(num_steps=6, split_steps=(0, 2, 4)),
    "branch_grpo_mix": dict(num_steps=6, split_steps=(0, 2), mix_window=(0, 3)),
    "tree_rpo": dict(num_steps=6, window=3),
    "tempflow_grpo": dict(num_steps=5, group_size=2, probes=3),
    "g2rpo": dict(num_steps=6, sde_steps=(0, 1, 2), probes=3, tail_strides=(1, 2)),
}


def tiny_config(**overrides) -> ToyConfig:
    fields = dict(vocabulary=list(vocabulary()), num_layers=1, num_heads=2, head_dim=8, text_dim=16, text_layers=1)
    fields.update(overrides)
    return ToyConfig(**fields)


def tiny_model(seed: int = 0) -> ToyModel:
    torch.manual_seed(seed)
    model = ToyModel(tiny_config())
    # diffusers zero-initialises the output layers; randomise them so outputs depend on inputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()


def same_checkpoint_weights(run_a: Path, run_b: Path) -> bool:
    """Whether two run directories' checkpoints hold bit-equal trainable weights, by the same names."""
    a = load_file(str(Path(run_a) / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(Path(run_b) / "checkpoint" / "trainable.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_records(run: Path, skip_first: bool = False) -> list[dict]:
    """The records of a run's metrics.jsonl, in order; skip_first leaves out the first (iteration
    0's, logged before any update). The one place tests read that file."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in (lines[1:] if skip_first else lines)]


def metric_values(run: Path, key: str) -> list:
    """`key` of each record of a run's metrics.jsonl, in order (None where a record lacks it)."""
    return [record.get(key) for record in metric_records(run)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """A tiny toy model saved once per test module, for training runs to start from."""
    return str(save_toy(tiny_model(), tmp_path_factory.mktemp("tiny"), dtype=torch.float32))


def tiny_run_overrides(tiny_dir, out) -> list[str]:
    return [
        f"policy={tiny_dir}",
        f"out={out}",
        "iterations=2",
        "prompts_per_iteration=2",
        "method.num_steps=4",
        "method.group_size=3",
        "method.shift=1.0",
        "eval_every=0",
        "checkpoint_every=1",
        "lr=1e-3",
        "threads=1",
        "reward=conftest:brightness_reward",
    ]


def tiny_run(tiny_dir, out, *overrides):
    """The config of a tiny training run (two iterations of flow_grpo on brightness, a checkpoint
    after each) into `out`, with `overrides` on top."""
    return build_config({}, tiny_run_overrides(tiny_dir, out) + list(overrides))


def train_one_iteration(tiny_dir, out, *overrides) -> dict:
    """Train one iteration of the tiny run with `overrides`; assert that credit reached the update
    (trained transitions whose advantages are not all alike, so some are non-zero) and that the
    update moved the weights. Returns the iteration's record."""
    from flowrl.policies.toy import load_toy
    from flowrl.trainer import train

    record = train(tiny_run(tiny_dir, out, "iterations=1", *overrides))["last"]
    assert record["transitions/trained"] > 0 and record["advantage/std"] > 0, record
    initial = dict(load_toy(tiny_dir).network.named_parameters())
    trained = load_file(str(Path(out) / "checkpoint" / "trainable.safetensors"))
    assert trained and trained.keys() <= initial.keys()
    assert any(not torch.equal(trained[k], initial[k].detach()) for k in trained), "no parameter changed"
    return record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_policy() -> ToyPolicy:
    return ToyPolicy(tiny_model())


def brightness_reward(images, prompts):
    """A plug-in reward for trainer tests: mean brightness (varies even for a random model)."""
    return images.mean(dim=(1, 2, 3))


# Set "after_calls" (monkeypatch.setitem) to make brightness_failing_on_demand fail from then on.
REWARD_FAILURES = {"after_calls": None, "calls": 0}


def brightness_failing_on_demand(images, prompts):
    """Mean brightness, raising as a reward service that went down once it has been called
    REWARD_FAILURES["after_calls"] times (never while that is None)."""
    REWARD_FAILURES["calls"] += 1
    after = REWARD_FAILURES["after_calls"]
    if after is not None and REWARD_FAILURES["calls"] > after:
        raise ConnectionError("the reward service is down")
    return images.mean(dim=(1, 2, 3))


def brightness_nan_for_dark(images, prompts):
    """Mean brightness, NaN where it is below the batch median (a reward that fails on some samples)."""
    values = images.mean(dim=(1, 2, 3)).clone()
    values[values < values.median()] = float("nan")
    return values


def one_value_reward(images, prompts):
    """A broken reward function: one number for the whole batch."""
    return [0.5]


def constant_reward(images, prompts):
    """The same reward for every image: every group ties, nothing trains."""
    return torch.full((len(prompts),), 0.5)


def brightness_tied_for_squares(images, prompts):
    """Mean brightness, but 0.5 for every prompt about squares: their groups tie (zero variance) and
    leave the update, so processes can hold different numbers of transitions."""
    values = images.mean(dim=(1, 2, 3)).clone()
    values[torch.tensor(["square" in p for p in prompts], dtype=torch.bool)] = 0.5
    return values


def serve_bytes(monkeypatch, content: bytes) -> None:
    """requests.get answers every URL with `content` (a pinned file standing in, offline)."""
    import requests

    class Response:
        def __init__(self) -> None:
            self.content = content

        def raise_for_status(self) -> None:
            return None

    monkeypatch.setattr(requests, "get", lambda url, timeout: Response())
