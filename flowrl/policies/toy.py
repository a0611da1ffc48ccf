"""The built-in toy text-to-image model: a tiny SD3Transformer2DModel over 32x32 pixels.

It shares the SD3 code path (`sd3_velocity`) and learns its own small text encoder over the
ToyShapes vocabulary, so it runs offline and trains on a laptop CPU.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from .base import TextConditioning
from .sd3_velocity import sd3_velocity

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_t2i"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
PAD, BOS = "<pad>", "<bos>"


@dataclass
class ToyConfig:
    """Architecture of the toy model; saved beside its weights as config.json."""

    vocabulary: list[str] = field(default_factory=list)
    resolution: int = 32
    patch_size: int = 2
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    text_dim: int = 64
    text_layers: int = 2
    max_tokens: int = 8


class ToyTextEncoder(nn.Module):
    """Word-level transformer encoder over a closed vocabulary.

    Returns token features [B, max_tokens, text_dim] and their masked mean [B, text_dim].
    """

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.tokens = [PAD, BOS, *config.vocabulary]
        self.index = {w: i for i, w in enumerate(self.tokens)}
        self.max_tokens = config.max_tokens
        self.embed = nn.Embedding(len(self.tokens), config.text_dim)
        self.position = nn.Parameter(torch.zeros(config.max_tokens, config.text_dim))
        layer = nn.TransformerEncoderLayer(
            config.text_dim, nhead=4, dim_feedforward=2 * config.text_dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.text_dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids [B, max_tokens]: <bos>, the words, then <pad>; unknown words fail by name."""
        ids = torch.full((len(prompts), self.max_tokens), self.index[PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = [BOS, *prompt.lower().split()]
            if len(words) > self.max_tokens:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words) - 1} words; the toy model reads at most {self.max_tokens - 1}"
                )
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(
                    f"prompt {prompt!r} uses words the toy model does not know: {unknown}; "
                    f"its vocabulary is {self.tokens[2:]}"
                )
            ids[row, : len(words)] = torch.tensor([self.index[w] for w in words])
        return ids

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = ids == self.index[PAD]  # [B, L]
        h = self.embed(ids) + self.position  # [B, L, D]
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))  # [B, L, D]
        keep = (~pad).unsqueeze(-1).to(h.dtype)  # [B, L, 1]
        pooled = (h * keep).sum(1) / keep.sum(1)  # [B, D]
        return h, pooled


class ToyModel(nn.Module):
    """Text encoder plus SD3 transformer: the whole toy model, as saved in one safetensors file."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.text_encoder = ToyTextEncoder(config)
        width = config.num_heads * config.head_dim
        self.transformer = SD3Transformer2DModel(
            sample_size=config.resolution,
            patch_size=config.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=config.num_layers,
            attention_head_dim=config.head_dim,
            num_attention_heads=config.num_heads,
            joint_attention_dim=config.text_dim,
            caption_projection_dim=width,
            pooled_projection_dim=config.text_dim,
            pos_embed_max_size=config.resolution // config.patch_size,
        )


class ToyPolicy:
    """The FlowPolicy of the toy model: pixels in [-1, 1], shape (3, resolution, resolution)."""

    def __init__(self, model: ToyModel, device: str | torch.device = "cpu"):
        self.model = model.to(device)
        self.config = model.config
        self.device = torch.device(device)
        r = self.config.resolution
        self.sample_shape = (3, r, r)

    native_benchmark = "toyshapes"  # the toy model draws the ToyShapes world: its exact verifier judges it

    @property
    def transformer(self) -> SD3Transformer2DModel:
        return self.model.transformer

    @property
    def network(self) -> SD3Transformer2DModel:
        """The network RL trains (the text encoder stays frozen)."""
        return self.model.transformer

    def encode(self, prompts: list[str]) -> TextConditioning:
        """Encode prompts (and the empty prompt, for guidance) with the toy text encoder."""
        ids = self.model.text_encoder.tokenize(list(prompts) + [""]).to(self.device)
        with torch.no_grad():
            embeds, pooled = self.model.text_encoder(ids)
        return TextConditioning(embeds[:-1], pooled[:-1], embeds[-1:], pooled[-1:])

    def velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: TextConditioning, guidance: float = 1.0
    ) -> torch.Tensor:
        return sd3_velocity(self.transformer, x, sigma, cond, guidance)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] to images in [0, 1], shape [B, 3, H, W]."""
        return ((x.float() + 1) / 2).clamp(0, 1)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The transformer's parameters; the text encoder stays frozen during RL."""
        return (p for p in self.transformer.parameters() if p.requires_grad)

    def export(self, directory: str | Path, lora: bool, network: nn.Module | None = None) -> Path:
        """A loadable toy model directory (float32) with the trained weights, LoRA merged in.
        `network`: a copy holding the weights to export (a sharded run's gathered replica);
        default: the live transformer, which stays as it is."""
        transformer = self.transformer if network is None else network
        model = self.model
        if lora or transformer is not self.transformer:
            if transformer is self.transformer:  # merge into a copy, not the live transformer
                transformer = copy.deepcopy(transformer)
            if lora:
                merge_lora(transformer)
            with torch.device("meta"):  # a shell for the two modules, no random init
                merged = ToyModel(model.config)
            merged.text_encoder, merged.transformer = model.text_encoder, transformer
            model = merged
        return save_toy(model, directory, dtype=torch.float32)


def merge_lora(module: nn.Module) -> None:
    """Fold every peft LoRA layer into its base layer in place, leaving plain nn.Linear modules."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], child.get_base_layer())


def save_toy(model: ToyModel, directory: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write config.json and model.safetensors (weights cast to `dtype`) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(model.config), indent=2))
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model": "flowrl-toy-t2i"})
    return directory


def check_toy_prompts(directory: str | Path | None, path: str, key: str) -> None:
    """Every line of the prompt file `path` is a prompt the toy model at `directory` can read:
    checked before any model loads, naming the line, the prompt and the unknown words."""
    config = json.loads(((Path(directory) if directory else SHIPPED_DIR) / CONFIG_NAME).read_text())
    vocabulary = set(config.get("vocabulary", []))
    max_words = int(config.get("max_tokens", ToyConfig.max_tokens)) - 1
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = line.strip().lower().split()
        unknown = [w for w in words if w not in vocabulary]
        if unknown or len(words) > max_words:
            why = (
                f"uses words the toy model does not know: {unknown}" if unknown else f"has more than {max_words} words"
            )
            raise ValueError(
                f"config key {key}={path!r}, line {number}: the prompt {line.strip()!r} {why} "
                f"(its vocabulary: flowrl prompts lists prompts it reads)"
            )


def load_toy(directory: str | Path | None = None, device: str | torch.device = "cpu") -> ToyPolicy:
    """Load the toy policy from a directory holding config.json and model.safetensors.

    With no directory, loads the weights shipped in the package.
    """
    directory = Path(directory) if directory is not None else SHIPPED_DIR
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a toy model directory needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(write one with scripts/pretrain_toy.py)"
            )
    config = ToyConfig(**json.loads(config_path.read_text()))
    model = ToyModel(config)
    try:
        state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    except Exception as error:  # safetensors' errors have no common base class
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    model.load_state_dict(state)
    model.eval()
    return ToyPolicy(model, device)
