"""Shared fixtures: tiny toy models built from configs, nothing downloaded."""

import pytest
import torch

from benchmarks.toyshapes.prompts import vocabulary
from flowrl.policies.toy import ToyConfig, ToyModel, ToyPolicy


def tiny_config(**overrides) -> ToyConfig:
    fields = dict(vocabulary=list(vocabulary()), num_layers=1, num_heads=2, head_dim=8, text_dim=16, text_layers=1)
    fields.update(overrides)
    return ToyConfig(**fields)


@pytest.fixture
def tiny_policy() -> ToyPolicy:
    torch.manual_seed(0)
    model = ToyModel(tiny_config())
    # diffusers zero-initialises the output layers; randomise them so outputs depend on inputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return ToyPolicy(model.eval())
