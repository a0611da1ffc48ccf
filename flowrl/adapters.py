"""What the trainer optimises: LoRA adapters through peft, or all transformer weights, and the
reference policy for the KL term (adapters disabled, or the initial weights swapped in)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> None:
    """Attach LoRA adapters (peft, via diffusers' adapter integration) and freeze everything else."""
    from peft import LoraConfig

    matched = [
        name for name, _ in transformer.named_modules() if any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not matched:
        raise ValueError(
            f"lora_targets {targets} match no module of the transformer; e.g. {[n for n, _ in transformer.named_modules()][1:8]}"
        )
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))
    if is_transformers_model(transformer):  # peft's own injection (transformers' integration wants a newer peft)
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, transformer)
        transformer.flowrl_peft_layers = True
    else:
        transformer.add_adapter(config)


def is_transformers_model(module: torch.nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def set_adapters_enabled(module: torch.nn.Module, enabled: bool) -> None:
    """Switch every peft LoRA layer of `module` on or off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(enabled)


def trainable_named_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in transformer.named_parameters() if p.requires_grad}


class Reference:
    """The reference policy for the KL: `with reference.active():` makes the policy's transformer
    compute the reference velocity. LoRA: adapters disabled (no second copy in memory). Full
    fine-tuning: the initial weights, kept once and swapped in place for the reference pass."""

    def __init__(self, transformer: torch.nn.Module, lora: bool) -> None:
        self.transformer = transformer
        self.lora = lora
        self.initial = (
            None if lora else {n: p.detach().clone() for n, p in trainable_named_parameters(transformer).items()}
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.lora and getattr(self.transformer, "flowrl_peft_layers", False):
            set_adapters_enabled(self.transformer, False)
            try:
                yield
            finally:
                set_adapters_enabled(self.transformer, True)
            return
        if self.lora:
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()
            return
        with swapped(trainable_named_parameters(self.transformer), self.initial):
            yield


class Ema:
    """An exponential moving average of the trained parameters, swapped in for evaluation/export."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], decay: float | None = None) -> None:
        """shadow = decay shadow + (1 - decay) params, with this average's own decay unless one is given."""
        weight = 1 - (self.decay if decay is None else decay)
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach(), weight)

    def swapped_in(self, params: dict[str, torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        return swapped(params, self.shadow)


def warmed_up_decay(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay at optimizer step `step` (1, 2, ...): `decay`, or with the warm-up of
    Flow-GRPO's and DiffusionNFT's code min((1 + step) / (10 + step), decay)."""
    return min((1 + step) / (10 + step), decay) if warmup else decay


def ramped_decay(steps: int, rate: float, most: float, flat: float) -> float:
    """DiffusionNFT's decay of its sampling policy: 0 for the first `flat` optimizer steps, then
    rising by `rate` per step up to `most`, so the sampler follows the trained weights closely at
    first and lags more later."""
    return 0.0 if steps < flat else min(rate * (steps - flat), most)


@contextlib.contextmanager
def swapped(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily copy `values` into `params` in place; the original values return afterwards."""
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
