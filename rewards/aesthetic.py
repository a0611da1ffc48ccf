"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor).

The score is a linear MLP head (`sac+logos+ava1-l14-linearMSE.pth`) on the L2-normalised image
embedding of OpenAI CLIP ViT-L/14. The head's state dict is that of an `nn.Sequential` stored as
`layers`: Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
Linear(64, 16), Linear(16, 1), so its keys are layers.{0,2,4,6,7}.{weight,bias}; there are no
activations (the "linear" in the file name), and the dropouts are identities at eval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .base import check_images
from .clip_common import (
    check_batch_size,
    load_open_clip,
    local_file,
    normalized_features,
    quick_gelu_for,
    score_in_batches,
    verified_download,
)

# The authors' file in their GitHub repository, at a pinned commit, checked against its sha256.
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/"
    "6934dd81792f086e613a121dbce43082cb8be85e/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"  # 3,714,759 bytes
LINEAR_INDICES = (0, 2, 4, 6, 7)  # positions of the Linear layers in the head's nn.Sequential
DROPOUTS = (0.2, 0.2, 0.1)  # after the first three Linear layers
HEAD_KEYS = frozenset(f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias"))


class AestheticHead(nn.Module):
    """The predictor's MLP, laid out so the release's state dict loads as is."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != len(LINEAR_INDICES) + 1:
            raise ValueError(
                f"the aesthetic head has {len(LINEAR_INDICES)} Linear layers, so {len(LINEAR_INDICES) + 1} widths; got {list(widths)}"
            )
        modules: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            modules.append(nn.Linear(width_in, width_out))
            if index < len(DROPOUTS):
                modules.append(nn.Dropout(DROPOUTS[index]))
        self.layers = nn.Sequential(*modules)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, D] normalised embeddings -> [B, 1] scores."""
        return self.layers(embedding)


def load_head(path: str) -> AestheticHead:
    """The aesthetic MLP head from a `.pth` state dict with the release's key names; the layer
    widths are read from the weights (768-1024-128-64-16-1 for the real file)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return head_from_state(state, repr(path), "an aesthetic predictor head")


def head_from_state(state: object, source: str, what: str) -> AestheticHead:
    """The linear MLP head held in `state` (keys layers.{0,2,4,6,7}.*), widths read from the
    weights; ImageReward's `mlp` has the same layout."""
    if not isinstance(state, dict) or set(state) != HEAD_KEYS:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source} is not {what}: expected the keys {sorted(HEAD_KEYS)}, found {found}")
    weights = [state[f"layers.{i}.weight"] for i in LINEAR_INDICES]  # each [out, in]
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    for index, (w, width_in) in enumerate(zip(weights, widths[:-1])):
        if w.ndim != 2 or w.shape[1] != width_in:
            raise ValueError(
                f"{source}: layers.{LINEAR_INDICES[index]}.weight has shape {tuple(w.shape)}, expected [*, {width_in}]"
            )
    head = AestheticHead(widths)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval().requires_grad_(False)


class AestheticReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> aesthetic score [B] (about 1-10).

    `head` is a local path of the head checkpoint (default: downloaded from the hub repo
    camenduru/improved-aesthetic-predictor, a mirror of the authors' GitHub file).
    `clip_pretrained` is an open_clip tag or a local open_clip checkpoint of OpenAI ViT-L/14;
    the model is built with QuickGELU, as OpenAI trained it, unless a tag says otherwise.
    Prompts are ignored (only their count is checked)."""

    name = "aesthetic"

    def __init__(
        self,
        head: str | None = None,
        clip_pretrained: str = "openai",
        architecture: str = "ViT-L-14",
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.batch_size = check_batch_size(batch_size)
        if head is not None:
            path = local_file(head, "aesthetic head")
        else:
            path = verified_download(HEAD_URL, HEAD_FILE, HEAD_SHA256, what="aesthetic head")
        self.head = load_head(path)
        # A local file cannot say its activation; the head was trained on OpenAI CLIP (QuickGELU).
        is_file = os.path.isfile(os.path.expanduser(str(clip_pretrained)))
        quick_gelu = True if is_file else quick_gelu_for(architecture, clip_pretrained)
        self.clip = load_open_clip(architecture, clip_pretrained, device, dtype, quick_gelu=quick_gelu)
        embed_dim = getattr(self.clip.model.visual, "output_dim", None)
        width_in = self.head.layers[0].in_features
        if embed_dim is not None and embed_dim != width_in:
            raise ValueError(
                f"the aesthetic head reads {width_in}-d embeddings but {architecture!r} gives {embed_dim}-d ones (the head is for ViT-L-14, 768-d)"
            )
        self.head.to(self.clip.device)  # kept in float32: it is tiny and was trained in float32

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Predicted aesthetic rating of each image: float32 [B] on the CPU."""
        check_images(images, prompts, self.name)
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # the rating ignores the prompt
        embedding, _ = normalized_features(self.clip, images, None)  # [b, 768] float32, unit norm
        return self.head(embedding).squeeze(-1)  # [b]

    __call__ = score
