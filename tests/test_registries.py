"""The contract of the one registry pattern: every registered estimator, objective and loss runs
through the trainer's real call path (or is refused at config time, before any model loads),
registries reject duplicates, and a new estimator or objective is one registration away."""

import math
from dataclasses import dataclass

import pytest
import torch

from conftest import train_one_iteration
from flowrl.advantage import ADVANTAGES, CREDIT_RULES, register_advantage
from flowrl.config import build_config
from flowrl.losses import LOSSES
from flowrl.objectives import OBJECTIVES, register_objective
from flowrl.objectives.sde import SdeObjective
from flowrl.policies.loading import POLICIES
from flowrl.rewards.registry import REWARDS, available, check, load
from flowrl.samplers.methods import METHODS


def usable_estimators() -> list[str]:
    return [name for name, entry in ADVANTAGES.entries.items() if not entry.traits.get("stateful")]


@pytest.mark.parametrize("name", usable_estimators())
def test_every_estimator_credits_a_training_iteration(tiny_dir, tmp_path, name):
    record = train_one_iteration(tiny_dir, tmp_path, f"method.advantage={name}", "method.group_size=3")
    assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))


@pytest.mark.parametrize("name", [name for name, entry in ADVANTAGES.entries.items() if entry.traits.get("stateful")])
def test_stateful_estimators_are_refused_at_config_time(name):
    with pytest.raises(ValueError, match=f"advantage estimator '{name}' keeps per-prompt state"):
        build_config({}, [f"method.advantage={name}"])


def test_estimator_options_are_checked_at_config_time():
    # rloo has no std scope: refused before any model loads, not a TypeError after the first rollout.
    with pytest.raises(ValueError, match=r"advantage estimator 'rloo' has no option\(s\) \['std_scope'\]"):
        build_config({}, ["method.advantage=rloo", "method.std_scope=batch"])
    with pytest.raises(ValueError, match="std_scope must be one of"):
        build_config({}, ["method.std_scope=prompt"])
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        build_config({}, ["method.advantage=nope"])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_trains_with_its_default_options(tiny_dir, tmp_path, name):
    if getattr(OBJECTIVES.lookup(name), "modality", "image") == "text":  # text policies: tests/test_llm.py
        with pytest.raises(ValueError, match="trains text policies"):
            train_one_iteration(tiny_dir, tmp_path, f"objective={name}")
        return
    train_one_iteration(tiny_dir, tmp_path, f"objective={name}")


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_trains_through_the_sde_objective(tiny_dir, tmp_path, name):
    train_one_iteration(tiny_dir, tmp_path, f"loss={name}", "objective.clip_low=0.2", "objective.clip_high=0.2")


def test_objective_options_are_checked_and_follow_the_objective():
    with pytest.raises(ValueError, match=r"objective 'sde' has no option\(s\) \['sampler'\]"):
        build_config({}, ["objective.sampler=old"])
    with pytest.raises(ValueError, match="nft_beta must be positive"):
        build_config({}, ["objective=nft", "objective.nft_beta=0"])
    # A recipe's options of another objective are dropped (with a note) when the objective changes.
    config = build_config(
        {"objective": "nft", "objective_options": {"sampler": "old", "nft_beta": 0.5}}, ["objective=sde"]
    )
    assert config.objective_options == {}


@dataclass
class SignOptions:
    scale: float = 1.0


def test_a_new_estimator_is_one_registration(tiny_dir, tmp_path):
    @register_advantage("test_sign", options=SignOptions)
    def sign(rewards, group_ids, *, scale=1.0):
        """The sign of the reward minus its group mean, times scale."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        ids = torch.as_tensor(group_ids)
        means = torch.stack([rewards[ids == g].mean() for g in ids.tolist()])
        return (scale * torch.sign(rewards - means)).float()

    try:
        with pytest.raises(ValueError, match=r"has no option\(s\) \['std_scope'\]"):
            build_config({}, ["method.advantage=test_sign", "method.std_scope=group"])
        record = train_one_iteration(tiny_dir, tmp_path, "method.advantage=test_sign")
        assert record["advantage/std"] == pytest.approx(
            1.0, abs=0.35
        )  # signs: |A| = 1 wherever a group's rewards differ
    finally:
        ADVANTAGES.unregister("test_sign")


@dataclass
class ReinforceOptions:
    """No options."""


def test_a_new_objective_is_one_registration(tiny_dir, tmp_path):
    @register_objective("test_reinforce", options=ReinforceOptions)
    class Reinforce(SdeObjective):
        """REINFORCE on the SDE transitions: -A log p, no ratio, no clip."""

        def loss(self, velocity, batch, micro, normalizer):
            logp, _, _ = self.score(velocity, batch.transitions, micro)
            loss = -(batch.advantages[micro].to(logp.device) * logp).sum() / normalizer
            return loss, {"loss/policy": float(loss.detach())}

    try:
        record = train_one_iteration(tiny_dir, tmp_path, "objective=test_reinforce")
        assert "loss/policy" in record and "ratio/mean" not in record
    finally:
        OBJECTIVES.unregister("test_reinforce")


@pytest.mark.parametrize("registry", [METHODS, ADVANTAGES, CREDIT_RULES, LOSSES, OBJECTIVES, POLICIES, REWARDS])
def test_registries_reject_duplicates_and_list_known_names(registry):
    name = next(iter(registry)) if registry else None
    if name is not None:
        with pytest.raises(ValueError, match="already registered"):
            registry.register(name)(object())
    with pytest.raises(ValueError, match=r"unknown .* 'no such entry'; known: \["):
        registry.lookup("no such entry")


def test_every_entry_of_a_registry_has_an_options_dataclass_and_a_description():
    for registry in (METHODS, ADVANTAGES, CREDIT_RULES, LOSSES, OBJECTIVES, POLICIES):
        for name, entry in registry.entries.items():
            registry.configure(name, {})  # its options dataclass builds, defaults passing its own checks
            assert entry.description, f"{registry.kind} {name!r} has no description"


def test_builtin_rewards_resolve_and_the_offline_ones_score():
    for name in available():
        check(name)  # resolves without building anything
    images = torch.rand(2, 3, 32, 32)
    for name in ("toyshapes", "toyshapes_binary", "jpeg_compressibility", "jpeg_incompressibility"):
        scores = load(name).score(images, ["a red circle", "a blue square"])
        assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
    with pytest.raises(ValueError, match=r"reward 'toyshapes' has no option\(s\) \['bogus'\]"):
        build_config({}, ["reward_options={toyshapes: {bogus: 1}}"])
