"""Stable Diffusion 3 / 3.5 behind the FlowPolicy interface, from a diffusers pipeline folder.

x is the VAE latent [B, 16, H/8, W/8]; the velocity is the transformer's raw output (noise - x0)
at timestep 1000 * sigma, with classifier-free guidance as two calls (sd3_velocity).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from .base import TextConditioning
from .diffusers_common import DiffusersPolicy, load_policy_pipeline, vae_scale_factor
from .sd3_velocity import sd3_velocity


class SD3Policy(DiffusersPolicy):
    """An SD3 transformer, its VAE and cached prompt encodings (CLIP-L + CLIP-G + optional T5)."""

    pipeline_class = StableDiffusion3Pipeline

    def __init__(
        self, pipeline: StableDiffusion3Pipeline, resolution: int = 512, max_sequence_length: int = 256
    ) -> None:
        super().__init__(pipeline, max_sequence_length)
        scale = vae_scale_factor(self.vae)
        cell = scale * self.transformer.config.patch_size
        if resolution % cell:
            raise ValueError(
                f"resolution {resolution} must be a multiple of {cell} (VAE scale {scale} x patch size {cell // scale})"
            )
        self.resolution = resolution
        self.sample_shape = (self.transformer.config.in_channels, resolution // scale, resolution // scale)

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # The pipeline's own encoder: CLIP-L and CLIP-G hidden states side by side, padded to T5's
        # width, then T5 tokens (zeros when the pipeline has no T5); pooled = both CLIP poolings.
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return embeds, pooled  # [N, 77 + max_sequence_length, D], [N, P]

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0
    ) -> torch.Tensor:
        """dx/dsigma [B, C, h, w] at latents x [B, C, h, w], sigma [B] or scalar."""
        return sd3_velocity(self.transformer, x.to(self.dtype), sigma, cond, guidance).to(x.dtype)


def load_sd3(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    resolution: int = 512,
    max_sequence_length: int = 256,
) -> SD3Policy:
    """An SD3Policy from a hub id or a local pipeline folder (T5 may be absent)."""
    pipeline = load_policy_pipeline(StableDiffusion3Pipeline, source, device, dtype)
    return SD3Policy(pipeline, resolution, max_sequence_length)
