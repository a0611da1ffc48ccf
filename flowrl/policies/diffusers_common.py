"""Helpers shared by the diffusers backends (SD3, FLUX.1): loading, prompt caching, decoding, export."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .base import TextConditioning

MODEL_INDEX = "model_index.json"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes by default

# encode_batch(prompts) -> (embeds [N, L, D], pooled [N, P]), all prompts distinct.
EncodeBatch = Callable[[list[str]], "tuple[torch.Tensor, torch.Tensor]"]


def resolve_source(name_or_path: str | Path) -> str:
    """A local pipeline directory (checked for model_index.json) or a hub id (passed through)."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "~")) or len(path.parts) > 2
    if path.exists() or looks_local:
        if not path.is_dir():
            problem = "is not a directory" if path.exists() else "does not exist"
            raise ValueError(
                f"{path} {problem}: expected a diffusers pipeline folder holding {MODEL_INDEX} or a hub id like 'org/name'"
            )
        if not (path / MODEL_INDEX).is_file():
            raise ValueError(
                f"{path} has no {MODEL_INDEX}: expected a diffusers pipeline folder as written by "
                "pipeline.save_pretrained (model_index.json plus one subfolder per component)"
            )
        return str(path)
    return str(name_or_path)


def load_policy_pipeline(pipeline_class: type, source: str | Path, device: str | torch.device, dtype: torch.dtype):
    """pipeline_class.from_pretrained(source) on `device`, text encoders and VAE frozen, progress
    bars off; also for folders saved without an optional text encoder.

    diffusers writes a component set to None (e.g. SD3 without T5) as [null, null] in
    model_index.json but then refuses to load it unless that component is passed as None.
    """
    source = resolve_source(source)
    config = pipeline_class.load_config(source)
    absent = {
        name: None
        for name, entry in config.items()
        if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry[0] is None
    }
    pipeline = pipeline_class.from_pretrained(source, **{dtype_keyword(): dtype}, **absent).to(device)
    freeze(*(getattr(pipeline, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def dtype_keyword() -> str:
    """from_pretrained's dtype argument: `dtype` in recent diffusers, `torch_dtype` (now deprecated) before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def freeze(*modules: torch.nn.Module | None) -> None:
    """Frozen, eval-mode modules (text encoders and VAE never train in RL fine-tuning)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


class PromptCache:
    """Encoded prompts kept per prompt on the policy's device: a prompt is encoded once per run.

    RL revisits the same prompts every epoch and needs the empty prompt at every call, so the text
    encoders (often larger than the transformer) run only for prompts not seen before. They run one
    prompt at a time: batched, a prompt's features change in the last bits with the prompts that
    happened to be new beside it, and a resumed run (empty cache) would drift from the original.
    """

    def __init__(self, encode_batch: EncodeBatch, device: torch.device) -> None:
        self.encode_batch = encode_batch
        self.device = device
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D], pooled [B, P]) for `prompts`, encoding only the ones not cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if missing:
            for prompt in missing:
                with torch.no_grad():
                    embeds, pooled = self.encode_batch([prompt])  # [1, L, D], [1, P]
                self.entries[prompt] = (embeds[0].detach().to(self.device), pooled[0].detach().to(self.device))
        embeds = torch.stack([self.entries[p][0] for p in prompts])  # [B, L, D]
        pooled = torch.stack([self.entries[p][1] for p in prompts])  # [B, P]
        return embeds, pooled

    def conditioning(self, prompts: list[str]) -> TextConditioning:
        """TextConditioning for `prompts`, with the empty prompt as the null conditioning."""
        embeds, pooled = self.lookup(list(prompts) + [""])
        return TextConditioning(embeds[:-1], pooled[:-1], embeds[-1:], pooled[-1:])


def vae_scale_factor(vae: torch.nn.Module) -> int:
    """Pixels per latent cell: each VAE level after the first halves the resolution."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, h, w] in the transformer's space to images [B, 3, H, W] in [0, 1], float32."""
    shift = vae.config.shift_factor or 0.0
    z = latents.to(vae.dtype) / vae.config.scaling_factor + shift  # undo the VAE latent normalisation
    images = vae.decode(z, return_dict=False)[0]  # [B, 3, H, W] in about [-1, 1]
    return ((images.float() + 1) / 2).clamp(0, 1)


def lora_adapter_name(transformer: torch.nn.Module) -> str:
    """The one peft adapter attached to `transformer`, or a ValueError saying what is there."""
    names = list(getattr(transformer, "peft_config", {}) or {})
    if len(names) != 1:
        raise ValueError(f"export with lora=True needs exactly one LoRA adapter on the transformer, found {names}")
    return names[0]


def export_transformer(transformer: torch.nn.Module, lora: bool, directory: str | Path, pipeline_class: type) -> Path:
    """Write the trained weights to `directory`; returns it.

    lora=True: the adapter in diffusers' LoRA format (pytorch_lora_weights.safetensors, with its
    LoraConfig as metadata so alpha survives), loadable by pipeline_class.load_lora_weights.
    lora=False: the whole transformer in directory/transformer, loadable by from_pretrained.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not lora:
        transformer.save_pretrained(directory / "transformer")
        return directory
    from peft.utils import get_peft_model_state_dict

    name = lora_adapter_name(transformer)
    state = get_peft_model_state_dict(transformer, adapter_name=name)
    metadata = transformer.peft_config[name].to_dict()
    pipeline_class.save_lora_weights(
        directory,
        transformer_lora_layers=state,
        weight_name=LORA_WEIGHTS_NAME,
        transformer_lora_adapter_metadata=metadata,
    )
    return directory


class DiffusersPolicy:
    """What the SD3 and FLUX policies share: the pipeline's transformer and VAE, the prompt cache,
    decoding, trainable parameters and export. Backends add _encode_batch, velocity, sample_shape."""

    pipeline_class: type  # the diffusers pipeline class of the backend (for LoRA export)
    native_benchmark = None  # judged by the run's reward on evaluation prompts

    def __init__(self, pipeline, max_sequence_length: int) -> None:
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.device = pipeline.transformer.device
        self.dtype = pipeline.transformer.dtype
        self.max_sequence_length = max_sequence_length
        self.cache = PromptCache(self._encode_batch, self.device)

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> TextConditioning:
        """Encode prompts and the empty prompt (the null conditioning), cached per prompt."""
        return self.cache.conditioning(list(prompts))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] to images [B, 3, H, W] in [0, 1], float32."""
        return decode_latents(self.vae, x)

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The transformer's parameters that require grad (LoRA adapters, or all weights)."""
        return (p for p in self.transformer.parameters() if p.requires_grad)

    @property
    def network(self) -> torch.nn.Module:
        """The network RL trains: the transformer (text encoders and VAE stay frozen)."""
        return self.transformer

    def export(self, directory: str | Path, lora: bool, network: torch.nn.Module | None = None) -> Path:
        """Save the LoRA adapter (diffusers format) or the whole transformer into `directory`;
        `network`: a copy holding the weights to export (a sharded run's gathered replica)."""
        return export_transformer(
            self.transformer if network is None else network, lora, directory, self.pipeline_class
        )
