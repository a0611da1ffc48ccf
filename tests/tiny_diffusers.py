"""Tiny SD3 and FLUX.1 pipelines with random weights, written to disk: nothing is downloaded.

Tokenizers are built in memory (a character-level CLIP BPE, a T5 unigram over letters), so the
saved pipelines go through diffusers' real from_pretrained code in the tests.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

RESOLUTION = 32  # pixels; the tiny VAE halves it once, so latents are [16, 16, 16]
LATENT_CHANNELS = 16
CLIP_TOKENS = 16  # CLIP tokenizer length (real models: 77)
CLIP_HIDDEN = 32
CLIP_PROJECTION = 16
T5_WIDTH = 2 * CLIP_HIDDEN  # SD3 pads the two concatenated CLIP hidden states to T5's width


def clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): every letter or digit is a token."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_TOKENS)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 unigram tokenizer over single letters, with T5's <pad>=0, </s>=1, <unk>=2 layout."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -1.0) for c in string.ascii_lowercase + string.digits]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_encoder(tokenizer: CLIPTokenizer, projection: bool) -> torch.nn.Module:
    """A 2-layer CLIP text encoder; with a projection head (SD3) or pooler output only (FLUX)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_HIDDEN,
        intermediate_size=2 * CLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_TOKENS,
        projection_dim=CLIP_PROJECTION,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_encoder(tokenizer: T5Tokenizer, width: int) -> T5EncoderModel:
    """A 2-layer T5 encoder of model width `width`."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_vae() -> AutoencoderKL:
    """A 2-level VAE (scale factor 2) with 16 latent channels and SD3-like scale/shift."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def randomise_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """diffusers zero-initialises some output layers; randomise them so outputs depend on inputs."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def save_tiny_sd3(directory: str | Path, with_t5: bool = True) -> Path:
    """Save a tiny StableDiffusion3Pipeline (T5 optional, as SD3 allows) to `directory`."""
    torch.manual_seed(0)
    tokenizer, tokenizer_3 = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_PROJECTION,  # CLIP-L and CLIP-G pooled, concatenated
        pos_embed_max_size=RESOLUTION // 2,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=randomise_zeros(transformer).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(),
        text_encoder=clip_encoder(tokenizer, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=clip_encoder(tokenizer, projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(tokenizer_3, T5_WIDTH) if with_t5 else None,
        tokenizer_3=tokenizer_3 if with_t5 else None,
    )
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory


def save_tiny_flux(directory: str | Path, guidance_embeds: bool = True) -> Path:
    """Save a tiny FluxPipeline (guidance-distilled like FLUX.1-dev, or not like schnell)."""
    torch.manual_seed(0)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # 2x2 latent patches packed into channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 width
        pooled_projection_dim=CLIP_HIDDEN,  # CLIPTextModel pooler output
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(),
        text_encoder=clip_encoder(tokenizer, projection=False),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2, 32),
        tokenizer_2=tokenizer_2,
        transformer=randomise_zeros(transformer).eval(),
    )
    directory = Path(directory)
    pipe.save_pretrained(directory)
    return directory
