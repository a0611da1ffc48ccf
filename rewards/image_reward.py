"""ImageReward (Xu et al. 2023), loaded natively from the official `ImageReward.pt` + `med_config.json`.

The official model is BLIP: a ViT (16-px patches, 224 px) whose tokens a BERT text encoder reads
through cross-attention in every layer; the [CLS] state goes through a five-layer linear MLP and
is standardised with the training set's mean and std. Here the ViT is transformers'
`BlipVisionModel` and the text encoder `BlipTextModel` (the same layers as BLIP's `med.py`), with
the official checkpoint's keys mapped onto them, so the `image-reward` package (which does not
import under transformers 5) is not needed.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .aesthetic import head_from_state
from .base import check_images, to_pil
from .clip_common import (
    OPENAI_MEAN,
    OPENAI_STD,
    check_batch_size,
    checkpoint_file,
    resolve_device,
    resolve_dtype,
    score_in_batches,
)

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
OFFICIAL_NAME = "ImageReward-v1.0"  # the name the package's `ImageReward.load` takes
TOKENIZER = "bert-base-uncased"  # BLIP's `init_tokenizer`, plus the [DEC] and [ENC] tokens it adds
MAX_LENGTH = 35  # `score()` pads and truncates prompts to 35 tokens
IMAGE_SIZE = 224
REWARD_MEAN = 0.16717362830052426  # the official standardisation of the MLP output
REWARD_STD = 1.0333394966054072
VIT_HEAD_DIM = 64  # BLIP's ViT-B (768/12) and ViT-L (1024/16) both use 64-d heads
VISION_PREFIX, TEXT_PREFIX, HEAD_PREFIX = "blip.visual_encoder.", "blip.text_encoder.", "mlp."

# BLIP ViT block names -> transformers BlipVisionModel names (the layers are the same).
_VIT_BLOCK_NAMES = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_TOP_NAMES = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}


def vision_key(official: str) -> str:
    """The BlipVisionModel name of a key of BLIP's `visual_encoder` (without the prefix)."""
    if official in _VIT_TOP_NAMES:
        return _VIT_TOP_NAMES[official]
    parts = official.split(".")
    if parts[0] == "blocks" and len(parts) >= 4:
        module, parameter = ".".join(parts[2:-1]), parts[-1]
        if module in _VIT_BLOCK_NAMES:
            return f"encoder.layers.{parts[1]}.{_VIT_BLOCK_NAMES[module]}.{parameter}"
    raise KeyError(official)


def model_files(model: str, med_config: str | None) -> tuple[str, str]:
    """(checkpoint, med_config.json) paths: a folder holding both, a checkpoint file (its config
    beside it or `med_config`), or the official name / hub repo (downloaded, cached)."""
    path = os.path.expanduser(str(model))
    if os.path.isdir(path):
        checkpoint = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"imagereward model={model!r}: the folder has no {CHECKPOINT_FILE}")
        config = med_config or os.path.join(path, MED_CONFIG_FILE)
    elif os.path.isfile(path):
        checkpoint, config = path, med_config or os.path.join(os.path.dirname(path), MED_CONFIG_FILE)
    elif model in (OFFICIAL_NAME, HUB_REPO):
        checkpoint = checkpoint_file(None, HUB_REPO, CHECKPOINT_FILE, what="ImageReward")
        config = med_config or checkpoint_file(None, HUB_REPO, MED_CONFIG_FILE, what="ImageReward med_config")
    else:
        raise FileNotFoundError(
            f"imagereward model={model!r}: no such file or folder; expected {OFFICIAL_NAME!r}, a folder with "
            f"{CHECKPOINT_FILE} and {MED_CONFIG_FILE}, or the path of {CHECKPOINT_FILE}"
        )
    config = os.path.expanduser(str(config))
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"imagereward: {MED_CONFIG_FILE} not found at {config!r} (pass med_config= its path, or put it beside {CHECKPOINT_FILE})"
        )
    return checkpoint, config


def split_checkpoint(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict, dict]:
    """The official state dict as (vision, text, head) state dicts under transformers' and the
    head's names. BLIP's unused projections (vision_proj, text_proj) are dropped."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith(VISION_PREFIX):
            try:
                vision[vision_key(key.removeprefix(VISION_PREFIX))] = value
            except KeyError:
                raise ValueError(f"{source}: unexpected ImageReward vision key {key!r}") from None
        elif key.startswith(TEXT_PREFIX):
            name = key.removeprefix(TEXT_PREFIX)
            if name != "embeddings.position_ids":  # a buffer BLIP saves; transformers builds its own
                text[name] = value
        elif key.startswith(HEAD_PREFIX):
            head[key.removeprefix(HEAD_PREFIX)] = value
    if not vision or not text or not head:
        missing = [p for p, part in ((VISION_PREFIX, vision), (TEXT_PREFIX, text), (HEAD_PREFIX, head)) if not part]
        raise ValueError(f"{source} is not an ImageReward checkpoint: no keys under {', '.join(missing)}")
    return vision, text, head


def vision_config(vision: dict[str, torch.Tensor]) -> Any:
    """The BlipVisionConfig of BLIP's ViT, read from its weights' shapes (width, depth, patch,
    image size); heads are 64-d as in both of BLIP's ViTs. LayerNorm eps 1e-6, exact GELU."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    tokens = vision["embeddings.position_embedding"].shape[1] - 1
    depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // VIT_HEAD_DIM),
        patch_size=patch,
        image_size=round(tokens**0.5) * patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        attention_dropout=0.0,
    )


def text_config(med_config: str, encoder_width: int) -> Any:
    """BlipTextConfig from BLIP's med_config.json; the cross-attention width is the ViT's, which
    BLIP sets over the file's `encoder_width`."""
    from transformers import BlipTextConfig

    with open(med_config) as handle:
        med = json.load(handle)
    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        bos_token_id=None,
        sep_token_id=None,
    )


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Load `state` into `module`, naming missing or extra keys (the package loads with
    strict=False, which would leave random weights in place silently)."""
    result = module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: the ImageReward {what} weights do not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def load_tokenizer(source: str) -> Any:
    """BLIP's tokenizer: BERT's uncased WordPiece with [DEC] as bos and [ENC] added."""
    from transformers import BertTokenizer

    path = os.path.expanduser(source)
    tokenizer = BertTokenizer.from_pretrained(path if os.path.isdir(path) else source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def official_transform() -> Any:
    """The package's preprocessing of a PIL image: bicubic resize of the short side to 224, centre
    crop, CLIP normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )


class ImageRewardReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> ImageReward [B] (standardised, about -2..2).

    `model`: "ImageReward-v1.0" (THUDM/ImageReward from the hub), a folder with ImageReward.pt and
    med_config.json, or the checkpoint's path. `tokenizer`: bert-base-uncased (hub id or folder).
    Images go through 8-bit PIL and the package's transform, as `ImageReward.score` receives them;
    the head runs in float32 as the package's does."""

    name = "imagereward"

    def __init__(
        self,
        model: str = OFFICIAL_NAME,
        med_config: str | None = None,
        tokenizer: str = TOKENIZER,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 16,
    ) -> None:
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.batch_size = check_batch_size(batch_size)
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        checkpoint, config_file = model_files(model, med_config)
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(
                f"{checkpoint!r} holds Python objects besides tensors, so it is not loaded (a checkpoint must be plain data)"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(
                f"{checkpoint!r} is not an ImageReward checkpoint (a state dict), got {type(state).__name__}"
            )
        vision_state, text_state, head_state = split_checkpoint(state, repr(checkpoint))
        vision_cfg = vision_config(vision_state)
        if vision_cfg.image_size != IMAGE_SIZE:
            raise ValueError(
                f"{checkpoint!r}: the ViT takes {vision_cfg.image_size} px, ImageReward scores at {IMAGE_SIZE}"
            )
        self.vision = BlipVisionModel(vision_cfg)
        load_strict(self.vision, vision_state, "vision", repr(checkpoint))
        self.text = BlipTextModel(text_config(config_file, vision_cfg.hidden_size), add_pooling_layer=False)
        load_strict(self.text, text_state, "text", repr(checkpoint))
        self.head = head_from_state(head_state, repr(checkpoint), "an ImageReward checkpoint (its mlp.* keys)")
        if self.head.layers[0].in_features != self.text.config.hidden_size:
            raise ValueError(
                f"{checkpoint!r}: the MLP reads {self.head.layers[0].in_features}-d features, the text encoder gives {self.text.config.hidden_size}"
            )
        for module in (self.vision, self.text):
            module.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.head.to(self.device).eval().requires_grad_(False)  # float32, as the package's `.float()` features
        self.tokenizer = load_tokenizer(tokenizer)
        self.transform = official_transform()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """ImageReward of each image with its prompt: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = torch.stack([self.transform(picture) for picture in to_pil(images)])
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.text(
            input_ids=tokens.input_ids.to(self.device),
            attention_mask=tokens.attention_mask.to(self.device),
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device),
        )
        features = text.last_hidden_state[:, 0, :].float()
        return ((self.head(features) - REWARD_MEAN) / REWARD_STD).squeeze(-1)

    __call__ = score
