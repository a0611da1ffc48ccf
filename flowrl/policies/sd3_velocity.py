"""The velocity of an SD3-style transformer, with classifier-free guidance in one batched call.

Shared by the toy model and the diffusers SD3 backend, so both follow the same conventions:
timestep = 1000 * sigma, and the output is dx/dsigma = noise - x0.
"""

from __future__ import annotations

import torch

from .base import TextConditioning


def sd3_velocity(transformer: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0) -> torch.Tensor:
    """v(x, sigma | prompt); with guidance g != 1, v_null + g * (v_prompt - v_null).

    x: [B, C, H, W]; sigma: [B] or scalar; returns [B, C, H, W].
    """
    batch = x.shape[0]
    if len(cond) != batch:
        raise ValueError(f"conditioning has {len(cond)} prompts but x has batch {batch}")
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(batch)
    embeds, pooled = cond.prompt_embeds, cond.pooled
    if guidance != 1.0:
        # Stack the unconditional half into the same call: one model evaluation per step.
        x = torch.cat([x, x])
        sigma = torch.cat([sigma, sigma])
        embeds = torch.cat([embeds, cond.null_embeds.expand_as(embeds)])
        pooled = torch.cat([pooled, cond.null_pooled.expand_as(pooled)])
    out = transformer(
        hidden_states=x,
        encoder_hidden_states=embeds.to(x.dtype),
        pooled_projections=pooled.to(x.dtype),
        timestep=sigma * 1000.0,
        return_dict=False,
    )[0]
    if guidance == 1.0:
        return out
    v_prompt, v_null = out.chunk(2)
    if torch.is_grad_enabled():
        # Training: the policy gradient flows through the prompt branch only (as Flow-GRPO does);
        # through v_null it would enter with weight (1 - g) and push the unconditional model the
        # opposite way, amplifying every update g-fold. Values are unchanged, so ratios stay 1.
        v_null = v_null.detach()
    return v_null + guidance * (v_prompt - v_null)
