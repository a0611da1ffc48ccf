"""The policy interface every backend implements: encode, velocity, decode (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass
class TextConditioning:
    """Encoded prompts for an SD3-style transformer.

    prompt_embeds: [B, L, D] token features; pooled: [B, P] pooled features.
    null_embeds / null_pooled: [1, L, D] / [1, P], the empty prompt, for classifier-free guidance.
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    null_embeds: torch.Tensor
    null_pooled: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def repeat_interleave(self, n: int) -> TextConditioning:
        """Each prompt n times in a row, as a group of n samples per prompt needs."""
        return TextConditioning(
            self.prompt_embeds.repeat_interleave(n, 0),
            self.pooled.repeat_interleave(n, 0),
            self.null_embeds,
            self.null_pooled,
        )

    def select(self, index: torch.Tensor) -> TextConditioning:
        """The prompts at `index` (rows may repeat), as a rollout batches nodes of many prompts."""
        index = index.to(self.prompt_embeds.device)
        return TextConditioning(self.prompt_embeds[index], self.pooled[index], self.null_embeds, self.null_pooled)


class FlowPolicy(Protocol):
    """A text-conditioned velocity field over sample space x (pixels or latents)."""

    sample_shape: tuple[int, ...]  # shape of one x, e.g. (3, 32, 32)
    device: torch.device
    network: torch.nn.Module  # the network RL trains (LoRA attaches here; FSDP shards it)
    native_benchmark: str | None  # a benchmark that judges this model's outputs exactly ("toyshapes"), or None

    def encode(self, prompts: list[str]) -> TextConditioning: ...

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0
    ) -> torch.Tensor: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor: ...

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def export(self, directory: str | Path, lora: bool, network: torch.nn.Module | None = None) -> Path: ...


def rollout_velocity(policy: FlowPolicy, cond: TextConditioning, guidance: float = 1.0, autocast: str | None = None):
    """The velocity(x, sigma, prompt_index) the solver layer's rollout calls, for encoded prompts;
    `autocast`: a device type whose bf16 autocast wraps the model call (the result is float32)."""

    def velocity(x: torch.Tensor, sigma: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        if autocast is None:
            return policy.velocity(x, sigma, cond.select(prompt_index), guidance)
        with torch.autocast(autocast, dtype=torch.bfloat16):
            return policy.velocity(x, sigma, cond.select(prompt_index), guidance).float()

    return velocity
