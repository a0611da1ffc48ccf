"""FLUX.1 behind the FlowPolicy interface, from a diffusers pipeline folder.

x is the unpacked VAE latent [B, 16, h, w]; the transformer sees 2x2 patches packed into tokens
[B, (h/2)(w/2), 64] at timestep sigma, and returns the velocity noise - x0 in the same packing.
FLUX.1-dev is guidance-distilled: the guidance scale enters through an embedding, in one call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline

from .base import TextConditioning
from .diffusers_common import DiffusersPolicy, load_policy_pipeline, vae_scale_factor


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: each 2x2 patch, row-major, becomes one token."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: latent height and width must be even, got {h}x{w}")
    patches = x.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, h/2, dy, w/2, dx]
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of pack_latents: [B, (h/2)(w/2), 4C] -> [B, C, h, w] for latent size (height, width)."""
    b, n, d = tokens.shape
    if n != (height // 2) * (width // 2) or d % 4:
        raise ValueError(f"cannot unpack tokens {tuple(tokens.shape)} into a {height}x{width} latent")
    patches = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2)  # [B, h/2, w/2, C, dy, dx]
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """RoPE positions of the packed tokens [(h/2)(w/2), 3]: (0, patch row, patch column)."""
    rows = torch.arange(height // 2, device=device).repeat_interleave(width // 2)
    cols = torch.arange(width // 2, device=device).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()


def text_ids(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """RoPE positions of the text tokens [L, 3]: all zero, as FLUX.1 uses."""
    return torch.zeros(length, 3, device=device)


class FluxPolicy(DiffusersPolicy):
    """A FLUX.1 transformer, its VAE and cached prompt encodings (T5 tokens, CLIP pooled)."""

    pipeline_class = FluxPipeline

    def __init__(self, pipeline: FluxPipeline, resolution: int = 512, max_sequence_length: int = 512) -> None:
        super().__init__(pipeline, max_sequence_length)
        scale = vae_scale_factor(self.vae)
        if resolution % (2 * scale):
            raise ValueError(
                f"resolution {resolution} must be a multiple of {2 * scale} (VAE scale {scale} x 2x2 packing)"
            )
        self.resolution = resolution
        channels = self.transformer.config.in_channels // 4
        self.sample_shape = (channels, resolution // scale, resolution // scale)

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return embeds, pooled  # T5 [N, max_sequence_length, D], CLIP pooled [N, P]

    def guidance_embedding(self, guidance: float, batch: int) -> torch.Tensor | None:
        """The guidance input [B] for a guidance-distilled transformer, None for one without."""
        if self.transformer.config.guidance_embeds:
            return torch.full((batch,), float(guidance), device=self.device, dtype=torch.float32)
        if guidance != 1.0:
            raise ValueError(
                f"guidance={guidance!r} but this FLUX transformer has no guidance embedding "
                "(FLUX.1-schnell style models take no guidance): use guidance=1.0"
            )
        return None

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0
    ) -> torch.Tensor:
        """dx/dsigma [B, C, h, w] at latents x [B, C, h, w], sigma [B] or scalar; one transformer call."""
        batch, _, height, width = x.shape
        if len(cond) != batch:
            raise ValueError(f"conditioning has {len(cond)} prompts but x has batch {batch}")
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device).expand(batch)
        out = self.transformer(
            hidden_states=pack_latents(x.to(self.dtype)),  # [B, N, 4C]
            encoder_hidden_states=cond.prompt_embeds.to(self.dtype),  # [B, L, D]
            pooled_projections=cond.pooled.to(self.dtype),  # [B, P]
            timestep=sigma,  # FLUX takes sigma itself (the pipeline divides its timesteps by 1000)
            img_ids=image_ids(height, width, x.device),  # [N, 3]
            txt_ids=text_ids(cond.prompt_embeds.shape[1], x.device),  # [L, 3]
            guidance=self.guidance_embedding(guidance, batch),  # [B] or None
            return_dict=False,
        )[0]  # [B, N, 4C]
        return unpack_latents(out, height, width).to(x.dtype)


def load_flux(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    resolution: int = 512,
    max_sequence_length: int = 512,
) -> FluxPolicy:
    """A FluxPolicy from a hub id or a local pipeline folder."""
    pipeline = load_policy_pipeline(FluxPipeline, source, device, dtype)
    return FluxPolicy(pipeline, resolution, max_sequence_length)
