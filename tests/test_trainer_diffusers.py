"""A full training run of the trainer on tiny SD3 and FLUX.1 pipelines saved to disk (random
weights, CPU): LoRA through peft, KL to the adapters-disabled reference, evaluation, export."""

import math

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from conftest import metric_records
from flowrl.config import build_config
from flowrl.policies.loading import load_trained_policy
from flowrl.trainer import Trainer, train
from tiny_diffusers import save_tiny_flux, save_tiny_sd3

PIPELINES = {"sd3": (save_tiny_sd3, StableDiffusion3Pipeline, "2.0"), "flux": (save_tiny_flux, FluxPipeline, "3.5")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\ntwo blue dogs\na green car\n")
    return {name: str(make(root / name)) for name, (make, _, _) in PIPELINES.items()}, str(prompts)


def run_config(saved, backend, out, *extra):
    pipelines, prompts = saved
    return build_config(
        {},
        [
            f"policy={pipelines[backend]}",
            f"out={out}",
            "resolution=32",
            f"prompts={prompts}",
            "prompts_per_iteration=2",
            "method=flow_grpo",
            "method.num_steps=3",
            "method.group_size=2",
            f"guidance={PIPELINES[backend][2]}",
            "iterations=2",
            "lora_rank=4",
            "lr=1e-2",
            "threads=1",
            "reward=conftest:brightness_reward",
            "eval_every=2",
            "eval_steps=2",
            "checkpoint_every=1",
            "drop_zero_variance=false",
            *extra,
        ],
    )


@pytest.mark.parametrize("backend", list(PIPELINES))
def test_lora_run_with_kl_trains_adapters_only_and_exports_a_loadable_lora(saved, backend, tmp_path):
    config = run_config(saved, backend, tmp_path / "run", "beta=0.1")
    trainer = Trainer(config)
    base = {n: p.detach().clone() for n, p in trainer.policy.transformer.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in trainer.params.items()}
    assert lora and all("lora" in n for n in lora)
    summary = trainer.train()
    assert summary["iterations"] == 2
    records = metric_records(tmp_path / "run")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for key in ("loss/policy", "loss/kl", "reward/mean", "clip_fraction"):
        assert all(math.isfinite(r[key]) and abs(r[key]) < 1e6 for r in records[1:]), key
    assert records[1]["loss/kl"] == pytest.approx(0.0, abs=1e-8)  # the first update starts at the reference
    assert records[2]["loss/kl"] > 0  # afterwards the adapters have moved away from it
    assert "eval/reward" in records[0] and "eval/reward" in records[2]
    for name in (
        "samples/iter_00002.png",
        "samples/iter_00002.json",
        "reward_curve.png",
        "checkpoint/trainable.safetensors",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    # Only the adapters moved; the base weights are untouched.
    assert any(not torch.equal(lora[n], p) for n, p in trainer.params.items())
    assert all(torch.equal(base[n], p) for n, p in trainer.policy.transformer.named_parameters() if n in base)

    # The exported LoRA, loaded into a fresh pipeline, reproduces the trained velocity.
    pipeline_class = PIPELINES[backend][1]
    pipeline = pipeline_class.from_pretrained(saved[0][backend])
    pipeline.load_lora_weights(str(tmp_path / "run" / "final"))
    x = torch.randn(2, *trainer.policy.sample_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 0.3])
    cond = trainer.policy.encode(["a red cat", "a green car"])
    with torch.no_grad():
        trained = trainer.policy.velocity(x, sigma, cond, float(PIPELINES[backend][2]))
        trainer.policy.transformer = pipeline.transformer
        reloaded = trainer.policy.velocity(x, sigma, cond, float(PIPELINES[backend][2]))
        # load_trained_policy finds the base model in the run's config and applies the LoRA.
        evaluated = load_trained_policy(str(tmp_path / "run"))
        from_run = evaluated.velocity(
            x, sigma, evaluated.encode(["a red cat", "a green car"]), float(PIPELINES[backend][2])
        )
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_run, trained, rtol=1e-4, atol=1e-5)


def test_full_fine_tuning_exports_the_transformer(saved, tmp_path):
    summary = train(run_config(saved, "sd3", tmp_path / "run", "lora_rank=0", "lr=1e-3", "eval_every=0"))
    assert summary["iterations"] == 2
    from diffusers import SD3Transformer2DModel

    exported = SD3Transformer2DModel.from_pretrained(tmp_path / "run" / "final" / "transformer")
    original = SD3Transformer2DModel.from_pretrained(saved[0]["sd3"], subfolder="transformer")
    changed = [n for n, p in exported.named_parameters() if not torch.equal(p, original.get_parameter(n))]
    assert changed  # the trained weights, not the original ones
    evaluated = load_trained_policy(str(tmp_path / "run" / "final"))
    assert all(torch.equal(p, exported.get_parameter(n)) for n, p in evaluated.transformer.named_parameters())


def test_lora_resume_continues_exactly(saved, tmp_path):
    train(run_config(saved, "sd3", tmp_path / "a", "iterations=3", "eval_every=0"))
    train(run_config(saved, "sd3", tmp_path / "b", "iterations=2", "eval_every=0"))
    train(run_config(saved, "sd3", tmp_path / "b", "iterations=3", "eval_every=0"))
    a = load_file(str(tmp_path / "a" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_sd35m_diffusionnft_recipe_trains_a_tiny_sd3(saved, tmp_path):
    """The shipped DiffusionNFT recipe's own settings (deterministic rollouts without guidance,
    objective sampler old, KL, LoRA on its modules), only sized down to a tiny pipeline."""
    from flowrl.cli import resolve_recipe
    from flowrl.config import load_config

    pipelines, prompts = saved
    config = load_config(
        resolve_recipe("sd35m_nft_geneval"),
        [
            f"policy={pipelines['sd3']}",
            f"out={tmp_path / 'run'}",
            "resolution=32",
            f"prompts={prompts}",
            f"eval_prompts={prompts}",
            "prompts_per_iteration=2",
            "method.num_steps=3",
            "method.group_size=2",
            "iterations=2",
            "lora_rank=4",
            "lora_alpha=8",
            "lr=1e-2",
            "threads=1",
            "reward=conftest:brightness_reward",
            "eval_every=0",
            "drop_zero_variance=false",
            "objective.old_decay=[0.3,0.5,0]",
            "gradient_checkpointing=false",
        ],
    )
    assert (
        config.objective,
        config.objective_options["sampler"],
        config.guidance,
        config.method_options["noise_level"],
    ) == ("nft", "old", 1.0, 0)
    trainer = Trainer(config)
    initial = {n: p.detach().clone() for n, p in trainer.params.items()}
    trainer.train()
    records = metric_records(tmp_path / "run", skip_first=True)
    assert [r["nft/sampler_decay"] for r in records] == pytest.approx([0.3, 0.5])
    assert all(
        math.isfinite(r["loss/total"]) and r["loss/kl"] >= 0 and r["transitions/trained"] == 2 * 2 * 2 for r in records
    )
    assert records[1]["loss/kl"] > 0  # the adapters left the reference
    # The sampling average lags the trained adapters (its exact update is tested on the toy model, test_nft.py).
    moved = [n for n, p in trainer.params.items() if not torch.equal(p, initial[n])]
    assert moved and all(not torch.equal(trainer.objective.old.shadow[n], trainer.params[n]) for n in moved)


def test_a_folder_that_is_no_pipeline_fails_before_loading(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a toy model directory .* nor a diffusers pipeline folder"):
        build_config({}, [f"policy={tmp_path / 'empty'}"])
    with pytest.raises(ValueError, match="not a hub id"):
        build_config({}, ["policy=no-such-folder"])
