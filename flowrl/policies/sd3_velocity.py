"""The velocity of an SD3-style transformer, with classifier-free guidance as two calls per step.

Shared by the toy model and the diffusers SD3 backend, so both follow the same conventions:
timestep = 1000 * sigma, and the output is dx/dsigma = noise - x0.
"""

from __future__ import annotations

import torch

from .base import TextConditioning


def sd3_velocity(
    transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0
) -> torch.Tensor:
    """v(x, sigma | prompt); with guidance g != 1, v_null + g * (v_prompt - v_null).

    x: [B, C, H, W]; sigma: [B] or scalar; returns [B, C, H, W].
    """
    batch = x.shape[0]
    if len(cond) != batch:
        raise ValueError(f"conditioning has {len(cond)} prompts but x has batch {batch}")
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(batch)
    if guidance == 1.0:
        return transformer_velocity(transformer, x, sigma, cond.prompt_embeds, cond.pooled)
    # The prompt and unconditional halves run as two calls, in training and sampling alike, so an
    # update recomputes a rollout's velocity with the same calls and its ratios start at exactly 1.
    # Both calls keep their graph in training: the guided velocity is the policy's mean, so the
    # exact policy gradient flows through the prompt branch with weight g and through the
    # unconditional one with weight 1 - g (Flow-GRPO's one batched call does the same).
    null_embeds, null_pooled = cond.null_embeds.expand_as(cond.prompt_embeds), cond.null_pooled.expand_as(cond.pooled)
    v_null = transformer_velocity(transformer, x, sigma, null_embeds, null_pooled)
    v_prompt = transformer_velocity(transformer, x, sigma, cond.prompt_embeds, cond.pooled)
    return v_null + guidance * (v_prompt - v_null)


def transformer_velocity(
    transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor
) -> torch.Tensor:
    """One call of the transformer at timestep 1000 * sigma."""
    return transformer(
        hidden_states=x,
        encoder_hidden_states=embeds.to(x.dtype),
        pooled_projections=pooled.to(x.dtype),
        timestep=sigma * 1000.0,
        return_dict=False,
    )[0]
