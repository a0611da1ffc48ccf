"""One entry point from a `policy=` setting to a FlowPolicy: the toy model or a diffusers pipeline."""

from __future__ import annotations

from pathlib import Path

import torch

BACKENDS = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}


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
        raise ValueError(f"policy={source!r}: not a toy model directory and no diffusers pipeline could be read there ({error})") from None


def load_policy(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, resolution: int = 512):
    """The policy `name` names: 'toy', a toy model directory, or an SD3/SD3.5/FLUX.1 pipeline
    (hub id or local folder). `dtype` and `resolution` apply to the diffusers backends."""
    if is_toy_source(name):
        from .toy import load_toy

        return load_toy(None if name == "toy" else name, device=device)
    class_name = pipeline_class_name(name)
    backend = BACKENDS.get(class_name)
    if backend == "sd3":
        from .sd3 import load_sd3

        return load_sd3(name, device=device, dtype=dtype, resolution=resolution)
    if backend == "flux":
        from .flux import load_flux

        return load_flux(name, device=device, dtype=dtype, resolution=resolution)
    raise ValueError(f"policy={name!r} is a {class_name}; supported pipelines: {', '.join(BACKENDS)} (or the toy model)")
