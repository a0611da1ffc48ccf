"""One entry point from a `policy=` setting to a FlowPolicy: the toy model or a diffusers pipeline.

Diffusers backends are registered by name with the pipeline class they load (`register_policy`);
a new model family is one module with its loader plus its registration.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowrl.registry import Registry

POLICIES = Registry("policy backend")
register_policy = POLICIES.register  # @register_policy("name", pipeline="DiffusersPipelineClass")


@register_policy("sd3", pipeline="StableDiffusion3Pipeline", description="Stable Diffusion 3 / 3.5 (diffusers)")
def _load_sd3(source: str, device, dtype: torch.dtype, resolution: int):
    from .sd3 import load_sd3

    return load_sd3(source, device=device, dtype=dtype, resolution=resolution)


@register_policy("flux", pipeline="FluxPipeline", description="FLUX.1 (diffusers)")
def _load_flux(source: str, device, dtype: torch.dtype, resolution: int):
    from .flux import load_flux

    return load_flux(source, device=device, dtype=dtype, resolution=resolution)


def backends() -> dict[str, str]:
    """Pipeline class name -> registered backend name."""
    return {entry.traits["pipeline"]: name for name, entry in POLICIES.entries.items()}


def is_toy_source(name: str) -> bool:
    """'toy' (the shipped model) or a toy model directory (config.json + model.safetensors)."""
    path = Path(name)
    return name == "toy" or ((path / "config.json").is_file() and (path / "model.safetensors").is_file())


def pipeline_class_name(source: str) -> str:
    """The `_class_name` of a diffusers pipeline folder or hub id (reads model_index.json only)."""
    from diffusers import DiffusionPipeline

    from .diffusers_common import resolve_source

    try:
        return str(DiffusionPipeline.load_config(resolve_source(source))["_class_name"])
    except (OSError, KeyError) as error:
        why = hub_problem(source) if not Path(source).expanduser().exists() else None
        raise ValueError(
            f"policy={source!r}: {why}"
            if why
            else f"policy={source!r}: not a toy model directory and no diffusers pipeline could be read there ({error})"
        ) from None


def check_hub_policy(source: str) -> None:
    """Refuse, before any model loads, a hub pipeline that cannot be read (hub unreachable and the
    model not cached, gated without access, no such model); diffusers' own retries take about
    30 s to say less. A cached model passes without a network call, so offline runs work."""
    from huggingface_hub import try_to_load_from_cache

    from .diffusers_common import MODEL_INDEX, resolve_source

    if is_toy_source(source) or Path(resolve_source(source)).exists():
        return
    if isinstance(try_to_load_from_cache(source, MODEL_INDEX), str):
        return
    why = hub_problem(source)
    if why:
        raise ValueError(f"config key policy={source!r}: {why}")


def hub_problem(repo_id: str) -> str | None:
    """Why a hub model cannot be read, in words: the hub unreachable (and the model not cached),
    a gated model this account has no access to, or no such model; None when it can be read."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return (
            f"HF_HUB_OFFLINE is set and the model is not in the local cache; download it where there is a "
            f"network (`hf download {repo_id}`) and pass its folder, or unset HF_HUB_OFFLINE"
        )
    try:
        info = huggingface_hub.model_info(repo_id, timeout=15)
        if getattr(info, "gated", False):  # the card is public; whether this account may read the files is not
            huggingface_hub.auth_check(repo_id)
    except GatedRepoError:
        return (
            f"the model is gated: accept its licence at https://huggingface.co/{repo_id} and log in "
            "(`hf auth login`, or set HF_TOKEN)"
        )
    except RepositoryNotFoundError:
        return f"no model {repo_id!r} on the hub (or a private one this account cannot see), and no such folder here"
    except Exception as error:  # noqa: BLE001  (offline mode, DNS, timeouts, proxies: the hub did not answer)
        return (
            f"the hub (huggingface.co) did not answer ({type(error).__name__}) and the model is not in the local "
            f"cache; download it where there is a network (`hf download {repo_id}`) and pass its folder"
        )
    return None


def load_policy(
    name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, resolution: int = 512
):
    """The policy `name` names: 'toy', a toy model directory, or an SD3/SD3.5/FLUX.1 pipeline
    (hub id or local folder). `dtype` and `resolution` apply to the diffusers backends."""
    if is_toy_source(name):
        from .toy import load_toy

        return load_toy(None if name == "toy" else name, device=device)
    class_name = pipeline_class_name(name)
    backend = backends().get(class_name)
    if backend is None:
        raise ValueError(
            f"policy={name!r} is a {class_name}; supported pipelines: {', '.join(backends())} (or the toy model)"
        )
    return POLICIES.lookup(backend)(name, device, dtype, resolution)


def load_trained_policy(
    source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, resolution: int | None = None
):
    """A policy to sample or evaluate, from anything a user points at: what `load_policy` takes,
    a training run directory (`out=` of flowrl train: its final/ and config.json), or a run's
    final/ folder: a toy model, a diffusers LoRA (applied to the run's base pipeline) or a
    fully fine-tuned transformer (swapped into it). `resolution` defaults to the run's."""
    import json

    path = Path(source).expanduser()
    if (path / "final").is_dir() and (path / "config.json").is_file():
        path = path / "final"
    run_config = path.parent / "config.json"
    lora_file = path / "pytorch_lora_weights.safetensors"
    trained_transformer = path / "transformer"
    if not (lora_file.is_file() or (trained_transformer.is_dir() and not (path / "model_index.json").is_file())):
        return load_policy(
            source if not path.is_dir() else str(path), device=device, dtype=dtype, resolution=resolution or 512
        )
    if not run_config.is_file():
        raise ValueError(
            f"{path} holds trained weights but no ../config.json names their base model; pass the run directory flowrl train wrote"
        )
    config = json.loads(run_config.read_text())
    policy = load_policy(
        config["policy"], device=device, dtype=dtype, resolution=resolution or int(config.get("resolution", 512))
    )
    if lora_file.is_file():
        policy.pipeline.load_lora_weights(str(path), weight_name=lora_file.name)
    else:
        model = type(policy.transformer).from_pretrained(str(trained_transformer), torch_dtype=dtype).to(device)
        policy.pipeline.transformer = model
    policy.transformer = policy.pipeline.transformer.eval()
    return policy
