"""Shared fixtures: tiny toy models built from configs, nothing downloaded."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowrl.benchmarks.toyshapes.prompts import vocabulary
from flowrl.policies.toy import ToyConfig, ToyModel, ToyPolicy


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


def metric_values(run: Path, key: str) -> list:
    """`key` of each record of a run's metrics.jsonl, in order (None where a record lacks it)."""
    return [json.loads(line).get(key) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


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


def brightness_tied_for_squares(images, prompts):
    """Mean brightness, but 0.5 for every prompt about squares: their groups tie (zero variance) and
    leave the update, so processes can hold different numbers of transitions."""
    values = images.mean(dim=(1, 2, 3)).clone()
    values[torch.tensor(["square" in p for p in prompts], dtype=torch.bool)] = 0.5
    return values
