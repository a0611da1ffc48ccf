"""ImageReward's native loader against the official scoring, transcribed independently.

The checkpoint is written in the official layout (`ImageReward.pt`: a state dict with BLIP's
`blip.visual_encoder.*` / `blip.text_encoder.*` names and the `mlp.layers.*` head, plus
`med_config.json` and a bert-base-uncased style `vocab.txt`) with random weights at small widths.
The reference below is the package's `ImageReward.score` written out in plain torch from BLIP's
`vit.py` and `med.py`: PIL bicubic resize and crop, pre-norm ViT, BERT with cross-attention and
the -10000 padding mask, the five-layer linear MLP and the (r - mean) / std standardisation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowrl.rewards import registry
from flowrl.rewards.image_reward import ImageRewardReward, load_tokenizer

VIT_WIDTH, VIT_DEPTH, PATCH, SIDE = 128, 2, 16, 224  # 64-d heads, as BLIP's ViTs
TEXT = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_hidden_layers": 2}
HEAD_WIDTHS = (64, 32, 16, 8, 4, 1)  # real: 768, 1024, 128, 64, 16, 1
WORDS = ["a", "red", "cube", "two", "blue", "spheres", "cat", "on", "mat", "sunset", "over", "water"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official ImageReward.pt key names (plus BLIP's unused projections)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def linear(name: str, width_out: int, width_in: int) -> None:
        state[f"{name}.weight"] = torch.randn(width_out, width_in, generator=generator) * width_in**-0.5
        state[f"{name}.bias"] = torch.randn(width_out, generator=generator) * 0.05

    def norm(name: str, width: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
        state[f"{name}.bias"] = 0.1 * torch.randn(width, generator=generator)

    v, c = "blip.visual_encoder.", VIT_WIDTH
    # The ViT's input tokens are small (variance ~1e-5), so its first LayerNorm's eps (1e-6) shows.
    state[v + "cls_token"] = torch.randn(1, 1, c, generator=generator) * 3e-3
    state[v + "pos_embed"] = torch.randn(1, (SIDE // PATCH) ** 2 + 1, c, generator=generator) * 3e-3
    state[v + "patch_embed.proj.weight"] = torch.randn(c, 3, PATCH, PATCH, generator=generator) * 1e-4
    state[v + "patch_embed.proj.bias"] = torch.randn(c, generator=generator) * 1e-3
    for i in range(VIT_DEPTH):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", c)
        linear(b + "attn.qkv", 3 * c, c)
        linear(b + "attn.proj", c, c)
        norm(b + "norm2", c)
        linear(b + "mlp.fc1", 4 * c, c)
        linear(b + "mlp.fc2", c, 4 * c)
    norm(v + "norm", c)
    t, h = "blip.text_encoder.", TEXT["hidden_size"]
    state[t + "embeddings.word_embeddings.weight"] = torch.randn(len(VOCAB) + 2, h, generator=generator)
    state[t + "embeddings.position_embeddings.weight"] = torch.randn(40, h, generator=generator) * 0.5
    state[t + "embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    norm(t + "embeddings.LayerNorm", h)
    for i in range(TEXT["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for part, width_in in (("attention", h), ("crossattention", c)):
            linear(f"{b}{part}.self.query", h, h)
            linear(f"{b}{part}.self.key", h, width_in)
            linear(f"{b}{part}.self.value", h, width_in)
            linear(f"{b}{part}.output.dense", h, h)
            norm(f"{b}{part}.output.LayerNorm", h)
        linear(b + "intermediate.dense", TEXT["intermediate_size"], h)
        linear(b + "output.dense", h, TEXT["intermediate_size"])
        norm(b + "output.LayerNorm", h)
    linear("blip.vision_proj", 32, c)
    linear("blip.text_proj", 32, h)
    for index, (width_in, width_out) in zip((0, 2, 4, 6, 7), zip(HEAD_WIDTHS[:-1], HEAD_WIDTHS[1:])):
        linear(f"mlp.layers.{index}", width_out, width_in)
    return state


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """A folder in the official layout (ImageReward.pt, med_config.json) and a tokenizer folder."""
    folder = tmp_path_factory.mktemp("imagereward")
    state = official_state()
    torch.save(state, folder / "ImageReward.pt")
    med = {
        "architectures": ["BertModel"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 40,
        "model_type": "bert",
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(VOCAB) + 2,  # BLIP adds [DEC] and [ENC], as 30522 -> 30524 for the real one
        "encoder_width": 768,  # BLIP overrides it with the ViT's width
        "add_cross_attention": True,
        **TEXT,
    }
    (folder / "med_config.json").write_text(json.dumps(med))
    tokenizer = tmp_path_factory.mktemp("bert-tokenizer")
    (tokenizer / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder, tokenizer, state


def reference_tokens(prompt: str, max_length: int = 35) -> tuple[torch.Tensor, torch.Tensor]:
    """WordPiece over a vocabulary of whole lower-case words: [CLS] words [SEP], truncated and
    padded to 35 as `score()` asks."""
    ids = [VOCAB.index(word) if word in VOCAB else 1 for word in prompt.lower().split()][: max_length - 2]
    ids = [2, *ids, 3]
    mask = [1] * len(ids) + [0] * (max_length - len(ids))
    return torch.tensor(ids + [0] * (max_length - len(ids))), torch.tensor(mask)


def reference_pixels(picture: Image.Image) -> torch.Tensor:
    """Resize(224, bicubic) of the short side (long side int(224 * long / short)), centre crop
    with rounded offsets, /255, CLIP normalisation."""
    width, height = picture.size
    if width <= height:
        size = (SIDE, int(SIDE * height / width))
    else:
        size = (int(SIDE * width / height), SIDE)
    resized = picture.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - SIDE) / 2)), int(round((size[1] - SIDE) / 2))
    array = np.asarray(resized.crop((left, top, left + SIDE, top + SIDE)), dtype=np.float64) / 255
    return torch.from_numpy((array - CLIP_MEAN) / CLIP_STD).permute(2, 0, 1).float()


def attention(query_in, key_in, state, prefix, heads, additive_mask=None):
    q = F.linear(query_in, state[prefix + "query.weight"], state[prefix + "query.bias"])
    k = F.linear(key_in, state[prefix + "key.weight"], state[prefix + "key.bias"])
    v = F.linear(key_in, state[prefix + "value.weight"], state[prefix + "value.bias"])
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if additive_mask is not None:
        scores = scores + additive_mask
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(query_in.shape[0], query_in.shape[1], -1)


def reference_score(state: dict, picture: Image.Image, prompt: str) -> float:
    """`ImageReward.score(prompt, picture)` of the package, one image at a time."""
    x = reference_pixels(picture).unsqueeze(0)
    W = lambda name: state["blip.visual_encoder." + name]  # noqa: E731
    c, heads = VIT_WIDTH, VIT_WIDTH // 64
    x = F.conv2d(x, W("patch_embed.proj.weight"), W("patch_embed.proj.bias"), stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([W("cls_token"), x], dim=1) + W("pos_embed")
    n = x.shape[1]
    for i in range(VIT_DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (c,), W(b + "norm1.weight"), W(b + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, W(b + "attn.qkv.weight"), W(b + "attn.qkv.bias")).reshape(1, n, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mixed = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1) @ v
        x = x + F.linear(mixed.transpose(1, 2).reshape(1, n, c), W(b + "attn.proj.weight"), W(b + "attn.proj.bias"))
        h = F.layer_norm(x, (c,), W(b + "norm2.weight"), W(b + "norm2.bias"), eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, W(b + "mlp.fc1.weight"), W(b + "mlp.fc1.bias"))),
            W(b + "mlp.fc2.weight"),
            W(b + "mlp.fc2.bias"),
        )
        x = x + h
    image_embeds = F.layer_norm(x, (c,), W("norm.weight"), W("norm.bias"), eps=1e-6)

    T = lambda name: state["blip.text_encoder." + name]  # noqa: E731
    ln = lambda y, name: F.layer_norm(y, (y.shape[-1],), T(name + ".weight"), T(name + ".bias"), eps=1e-12)  # noqa: E731
    dense = lambda y, name: F.linear(y, T(name + ".weight"), T(name + ".bias"))  # noqa: E731
    ids, mask = reference_tokens(prompt)
    e = T("embeddings.word_embeddings.weight")[ids] + T("embeddings.position_embeddings.weight")[: ids.shape[0]]
    e = ln(e, "embeddings.LayerNorm").unsqueeze(0)
    padding = (1.0 - mask.float())[None, None, None, :] * -10000.0
    text_state = {k.removeprefix("blip.text_encoder."): v for k, v in state.items()}
    for i in range(TEXT["num_hidden_layers"]):
        b = f"encoder.layer.{i}."
        a = attention(e, e, text_state, b + "attention.self.", TEXT["num_attention_heads"], padding)
        e = ln(dense(a, b + "attention.output.dense") + e, b + "attention.output.LayerNorm")
        a = attention(e, image_embeds, text_state, b + "crossattention.self.", TEXT["num_attention_heads"])
        e = ln(dense(a, b + "crossattention.output.dense") + e, b + "crossattention.output.LayerNorm")
        f = F.gelu(dense(e, b + "intermediate.dense"))
        e = ln(dense(f, b + "output.dense") + e, b + "output.LayerNorm")
    r = e[:, 0, :]
    for index in (0, 2, 4, 6, 7):
        r = F.linear(r, state[f"mlp.layers.{index}.weight"], state[f"mlp.layers.{index}.bias"])
    return float((r - MEAN) / STD)


def test_prompt_tokens_follow_score_rules(official_files):
    _, tokenizer, _ = official_files
    tok = load_tokenizer(str(tokenizer))
    long_prompt = " ".join(WORDS * 4)  # 48 words: cut to 33 + [CLS] and [SEP]
    for prompt in ("a red cube", "Two BLUE spheres on a mat", long_prompt, "a zebra"):
        got = tok(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        ids, mask = reference_tokens(prompt)
        assert got.input_ids[0].tolist() == ids.tolist(), prompt
        assert got.attention_mask[0].tolist() == mask.tolist(), prompt
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]


def test_native_loader_scores_as_the_official_model(official_files):
    folder, tokenizer, state = official_files
    reward = ImageRewardReward(model=str(folder), tokenizer=str(tokenizer), batch_size=3)
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(4, 3, 5, 7, generator=generator)
    images = F.interpolate(coarse, size=(256, 320), mode="bilinear", align_corners=False).clamp(0, 1)
    prompts = ["a red cube", "two blue spheres", "a cat on a mat " * 8, "sunset over water"]
    got = reward(images, prompts)
    pictures = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images]
    expected = torch.tensor([reference_score(state, p, q) for p, q in zip(pictures, prompts)])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert float(got.max() - got.min()) > 0.05  # the scores tell the inputs apart: the check is not vacuous
    swapped = reward(images.flip(0), prompts)
    assert not torch.allclose(swapped, got)  # the image matters, not only the prompt


def test_portrait_images_and_registry_name(official_files):
    folder, tokenizer, state = official_files
    reward = registry.load("imagereward", model=str(folder / "ImageReward.pt"), tokenizer=str(tokenizer))
    images = torch.rand(2, 3, 300, 230, generator=torch.Generator().manual_seed(2))
    pictures = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images]
    expected = torch.tensor([reference_score(state, p, "a blue cube") for p in pictures])
    torch.testing.assert_close(reward(images, ["a blue cube"] * 2), expected, atol=2e-5, rtol=1e-5)


def test_bf16_backbone_stays_close(official_files):
    folder, tokenizer, _ = official_files
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    full = ImageRewardReward(model=str(folder), tokenizer=str(tokenizer))(images, ["a cat", "a mat"])
    half = ImageRewardReward(model=str(folder), tokenizer=str(tokenizer), dtype="bf16")(images, ["a cat", "a mat"])
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


def test_bad_checkpoints_are_named(official_files, tmp_path):
    folder, tokenizer, state = official_files
    broken = dict(state)
    del broken["blip.text_encoder.encoder.layer.1.output.dense.weight"]
    torch.save(broken, tmp_path / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match=r"med_config\.json not found.*med_config="):
        ImageRewardReward(model=str(tmp_path), tokenizer=str(tokenizer))
    (tmp_path / "med_config.json").write_text((folder / "med_config.json").read_text())
    with pytest.raises(
        ValueError, match=r"text weights do not fit: missing \['encoder\.layer\.1\.output\.dense\.weight'\]"
    ):
        ImageRewardReward(model=str(tmp_path), tokenizer=str(tokenizer))
    torch.save({"mlp.layers.0.weight": torch.zeros(1)}, tmp_path / "ImageReward.pt")
    with pytest.raises(
        ValueError, match=r"not an ImageReward checkpoint: no keys under blip\.visual_encoder\., blip\.text_encoder\."
    ):
        ImageRewardReward(model=str(tmp_path), tokenizer=str(tokenizer))
    with pytest.raises(FileNotFoundError, match=r"model='/no/such/ImageReward\.pt': no such file or folder"):
        ImageRewardReward(model="/no/such/ImageReward.pt", tokenizer=str(tokenizer))


def test_a_pickled_object_is_not_loaded(official_files, tmp_path):
    _, tokenizer, _ = official_files
    torch.save({"blip.visual_encoder.cls_token": Image.new("RGB", (1, 1))}, tmp_path / "ImageReward.pt")
    with pytest.raises(ValueError, match=r"holds Python objects besides tensors.*not loaded"):
        ImageRewardReward(model=str(tmp_path), med_config=str(tmp_path / "ImageReward.pt"), tokenizer=str(tokenizer))
