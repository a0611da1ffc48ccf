"""CLIP-family rewards (HPS, CLIP score, aesthetic, PickScore) on tiny random models.

Each model is the real architecture (open_clip CLIP, transformers CLIPModel) from a tiny config,
saved in the on-disk format of the real release and loaded through the reward's own loading
code; nothing is downloaded (the tests pass with HF_HUB_OFFLINE=1). Scores are checked against a
hand computation with the raw model, preprocessing against explicit torch ops and against the
libraries' own 8-bit PIL pipelines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import string

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from flowrl.rewards import registry
from flowrl.rewards.aesthetic import HEAD_FILE, HEAD_KEYS, AestheticReward
from flowrl.rewards.base import to_pil, to_uint8
from flowrl.rewards.clip_common import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageTransform,
    preprocess,
    quick_gelu_for,
    verified_download,
)
from flowrl.rewards.clip_score import CLIPScoreReward
from flowrl.rewards.hps import HPSReward
from flowrl.rewards.pickscore import PickScoreReward

TINY = "flowrl-test-tiny-clip"  # registered with open_clip below
SIDE = 32  # the tiny models' input resolution (real ones: 224)
EMBED = 768  # ViT-L/14's embedding width, so the aesthetic head has its real shapes
PROMPTS = ["a red cube", "two blue spheres", "a cat on a mat", "sunset over water", "a green cone"]
ATOL_SCORE = 1e-5
# 8-bit PIL resizing vs float tensor resizing of the same 8-bit image: the PIL path rounds its
# output to 1/255 and uses fixed-point weights, i.e. <= ~1/255 per pixel, which is
# 1/255/0.26 ~= 0.015 after dividing by CLIP's std; 0.03 leaves room for a second rounding.
ATOL_PIL = 0.03
MEAN_PIL = 0.006  # mean |difference|: rounding to 1/255 alone gives ~0.25/255/0.27 ~= 0.0036
MEAN = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def smooth_images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[count, 3, height, width] in [0, 1]: smooth colour fields (upsampled 6x6 noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def quantised(images: torch.Tensor) -> torch.Tensor:
    """The 8-bit values a PIL image of `images` holds, as floats in [0, 1]."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 255


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN) / STD


# ---------------------------------------------------------------- tiny open_clip models


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    """Register a 2-layer ViT CLIP config with open_clip (its supported add_model_config way)."""
    config = {
        "embed_dim": EMBED,
        "vision_cfg": {"image_size": SIDE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return TINY


def raw_open_clip(arch: str, state: dict | None = None, quick_gelu: bool = False) -> nn.Module:
    """An open_clip CLIP of `arch`, random (seeded) or with `state` loaded by hand."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    if state is not None:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def hand_clip_cosine(model: nn.Module, arch: str, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image, text) per pair from the raw model: normalise each feature, dot product."""
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(open_clip.get_tokenizer(arch)(prompts))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (image * text).sum(dim=-1)


@pytest.fixture(scope="module")
def hps_checkpoint(tiny_arch, tmp_path_factory):
    """A tiny HPS checkpoint laid out like HPS_v2_compressed.pt: {"state_dict": open_clip CLIP
    state dict} (in float16, the 'compressed' release's storage), beside the usual training keys."""
    model = raw_open_clip(tiny_arch)
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("hps") / "HPS_v2_compressed.pt"
    torch.save({"epoch": 1, "name": "hps-tiny", "state_dict": state}, path)
    return path, state


@pytest.fixture(scope="module")
def hps(tiny_arch, hps_checkpoint) -> HPSReward:
    return HPSReward(version="v2.0", checkpoint=str(hps_checkpoint[0]), architecture=tiny_arch)


def test_hps_score_is_the_cosine_of_normalised_features(hps, hps_checkpoint, tiny_arch):
    images = smooth_images(3, 48, 48)  # square: HPS's transform is a plain resize to 32 x 32
    reference = raw_open_clip(tiny_arch, hps_checkpoint[1])
    pixels = normalise(F.interpolate(images, size=(SIDE, SIDE), mode="bicubic", align_corners=False, antialias=True))
    expected = hand_clip_cosine(reference, tiny_arch, pixels, PROMPTS[:3])  # diag(img @ txt.T), no logit scale
    scores = hps.score(images, PROMPTS[:3])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=ATOL_SCORE, rtol=0)
    assert hps.name == "hpsv2.0"


def test_hps_preprocessing_fits_the_long_side_and_pads_with_black(hps):
    # 40 x 24 -> scale 32/40 -> 32 x 19 (19.2 rounded), then 13 columns of zeros: 6 left, 7 right,
    # as HPSv2's ResizeMaxSize does on the float tensor (no clipping of the bicubic overshoot).
    images = smooth_images(2, 40, 24)
    canvas = torch.zeros(2, 3, SIDE, SIDE)
    canvas[..., :, 6:25] = F.interpolate(images, size=(32, 19), mode="bicubic", align_corners=False, antialias=True)
    got = preprocess(images, hps.clip.transform)
    assert got.shape == (2, 3, SIDE, SIDE)
    torch.testing.assert_close(got, normalise(canvas), atol=1e-6, rtol=0)


def test_hps_batching_and_versions_by_name(hps, hps_checkpoint, tiny_arch):
    images = smooth_images(5, 40, 40, seed=1)
    whole = hps.score(images, PROMPTS)
    hps.batch_size = 2
    try:
        torch.testing.assert_close(hps.score(images, PROMPTS), whole, atol=1e-6, rtol=0)
    finally:
        hps.batch_size = 32
    assert hps.score(images[:0], []).shape == (0,)
    v21 = registry.load("hpsv2.1", checkpoint=str(hps_checkpoint[0]), architecture=tiny_arch)
    assert isinstance(v21, HPSReward) and v21.name == "hpsv2.1"
    default = registry.load("hpsv2", checkpoint=str(hps_checkpoint[0]), architecture=tiny_arch)
    assert default.version == "v2.1"  # as Flow-GRPO, DanceGRPO and Pref-GRPO use
    torch.testing.assert_close(v21.score(images, PROMPTS), whole, atol=1e-6, rtol=0)


def test_hps_missing_checkpoint_names_the_path(tmp_path, tiny_arch):
    missing = tmp_path / "nowhere" / "HPS_v2.1_compressed.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HPSReward(version="v2.1", checkpoint=str(missing), architecture=tiny_arch)
    with pytest.raises(ValueError, match="v3"):
        HPSReward(version="v3", checkpoint=str(missing))


@pytest.mark.skipif(importlib.util.find_spec("hpsv2") is not None, reason="hpsv2 is installed here")
def test_hps_package_backend_says_it_is_not_installed():
    with pytest.raises(ImportError, match="hpsv2 package, which is not installed"):
        HPSReward(backend="hpsv2")


# ---------------------------------------------------------------- CLIP score


@pytest.fixture(scope="module")
def clip_file(tiny_arch, tmp_path_factory):
    """A tiny open_clip checkpoint in open_clip's own format (a plain state dict)."""
    state = raw_open_clip(tiny_arch).state_dict()
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def clip_score(tiny_arch, clip_file) -> CLIPScoreReward:
    return CLIPScoreReward(architecture=tiny_arch, pretrained=str(clip_file[0]), quick_gelu=False)


def hand_shortest_edge(images: torch.Tensor, floor_offset: bool) -> torch.Tensor:
    """Short side to SIDE (bicubic, antialiased, clipped like 8-bit resizing), centre crop."""
    height, width = images.shape[-2:]
    new = (SIDE, int(SIDE * width / height)) if height <= width else (int(SIDE * height / width), SIDE)
    resized = F.interpolate(images, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    margin_h, margin_w = new[0] - SIDE, new[1] - SIDE
    top = margin_h // 2 if floor_offset else int(round(margin_h / 2))
    left = margin_w // 2 if floor_offset else int(round(margin_w / 2))
    return normalise(resized[..., top : top + SIDE, left : left + SIDE])


def test_clip_score_is_the_cosine_of_normalised_features(clip_score, clip_file, tiny_arch):
    images = smooth_images(4, 40, 54, seed=2)  # -> 32 x 43, odd margin 11: offset round(5.5) = 6
    reference = raw_open_clip(tiny_arch, clip_file[1])
    expected = hand_clip_cosine(reference, tiny_arch, hand_shortest_edge(images, floor_offset=False), PROMPTS[:4])
    scores = clip_score.score(images, PROMPTS[:4])
    assert scores.shape == (4,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=ATOL_SCORE, rtol=0)
    clip_score.batch_size = 3
    try:
        torch.testing.assert_close(clip_score.score(images, PROMPTS[:4]), scores, atol=1e-6, rtol=0)
    finally:
        clip_score.batch_size = 32


# (43, 32) and (32, 47): no resize, odd crop margins 11 and 15 where rounding and flooring differ
@pytest.mark.parametrize("height, width", [(40, 54), (57, 45), (43, 32), (32, 47), (32, 32), (20, 20)])
def test_open_clip_preprocessing_matches_its_pil_eval_transform(clip_score, height, width):
    images = smooth_images(2, height, width, seed=3)
    pil_transform = image_transform_v2(PreprocessCfg(**clip_score.clip.model.visual.preprocess_cfg), is_train=False)
    expected = torch.stack([pil_transform(picture) for picture in to_pil(images)])
    got = preprocess(quantised(images), clip_score.clip.transform)
    assert got.shape == expected.shape == (2, 3, SIDE, SIDE)
    torch.testing.assert_close(got, expected, atol=ATOL_PIL, rtol=0)
    assert (got - expected).abs().mean() < MEAN_PIL
    # and exactly the explicit torch ops
    torch.testing.assert_close(got, hand_shortest_edge(quantised(images), floor_offset=False), atol=1e-6, rtol=0)


def test_openai_weights_get_quick_gelu(tiny_arch, clip_file):
    # open_clip >= 2.24 builds ViT-L-14 with plain GELU even for the "openai" tag; we must not.
    assert quick_gelu_for("ViT-L-14", "openai") is True
    assert quick_gelu_for("ViT-H-14", "laion2b_s32b_b79k") is False
    assert quick_gelu_for(tiny_arch, str(clip_file[0])) is False
    reward = CLIPScoreReward(architecture=tiny_arch, pretrained=str(clip_file[0]), quick_gelu=True)
    assert type(reward.clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    # a file cannot say its activation: the CLIP score asks instead of guessing GELU for OpenAI weights
    with pytest.raises(ValueError, match="quick_gelu=True for OpenAI CLIP weights"):
        CLIPScoreReward(architecture=tiny_arch, pretrained=str(clip_file[0]))


def test_clip_score_missing_checkpoint_names_the_path(tmp_path, tiny_arch):
    with pytest.raises(FileNotFoundError, match="missing-clip.pt"):
        CLIPScoreReward(architecture=tiny_arch, pretrained=str(tmp_path / "missing-clip.pt"))
    with pytest.raises(ValueError, match="no-such-tag"):
        CLIPScoreReward(architecture=tiny_arch, pretrained="no-such-tag")
    with pytest.raises(ValueError, match="no-such-arch"):
        CLIPScoreReward(architecture="no-such-arch", pretrained="openai")


def test_scores_check_their_inputs(clip_score):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        clip_score.score(smooth_images(2, SIDE, SIDE), ["one"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clip_score.score(smooth_images(1, SIDE, SIDE) * 3, ["one"])


# ---------------------------------------------------------------- aesthetic predictor


class ReleaseHead(nn.Module):
    """The MLP of improved-aesthetic-predictor's simple_inference.py (its state dict format)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(EMBED, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory, clip_file):
    torch.manual_seed(1)
    head = ReleaseHead().eval()
    with torch.no_grad():  # unit-gain layers, so scores follow the embedding instead of ~constant
        for layer in head.layers:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0, layer.in_features**-0.5)
                layer.bias.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("aesthetic") / HEAD_FILE
    torch.save(head.state_dict(), path)
    return path, head


def test_a_downloaded_head_is_kept_only_with_the_published_sha256(
    aesthetic_files, clip_file, tiny_arch, monkeypatch, tmp_path
):
    from flowrl.rewards import aesthetic

    head_path, _ = aesthetic_files
    data = head_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "flowrl" / "head.pth"
    assert verified_download(head_path.as_uri(), "head.pth", digest, "aesthetic head") == str(cached)
    assert cached.read_bytes() == data
    # the checked copy is used again without the network (the URL may be gone)
    assert verified_download("file:///nowhere/head.pth", "head.pth", digest, "aesthetic head") == str(cached)
    with pytest.raises(RuntimeError, match=r"is not the published file .*nothing was kept"):
        verified_download(head_path.as_uri(), "other.pth", "0" * 64, "aesthetic head")
    assert not (tmp_path / "hub" / "flowrl" / "other.pth").exists()
    cached.write_bytes(data[:-1])  # a damaged cached copy is fetched again, not used
    with pytest.raises(RuntimeError, match=r"could not download the aesthetic head from file:///nowhere"):
        verified_download("file:///nowhere/head.pth", "head.pth", digest, "aesthetic head")
    # the reward's default head goes through the same check
    monkeypatch.setattr(aesthetic, "HEAD_URL", head_path.as_uri())
    monkeypatch.setattr(aesthetic, "HEAD_SHA256", digest)
    reward = AestheticReward(clip_pretrained=str(clip_file[0]), architecture=tiny_arch)
    assert reward.head.layers[0].weight.shape[1] == 768
    monkeypatch.setattr(aesthetic, "HEAD_SHA256", "f" * 64)
    with pytest.raises(RuntimeError, match="aesthetic head downloaded from file://.* is not the published file"):
        AestheticReward(clip_pretrained=str(clip_file[0]), architecture=tiny_arch)


def test_aesthetic_is_the_head_on_the_normalised_image_embedding(aesthetic_files, clip_file, tiny_arch):
    head_path, head = aesthetic_files
    assert set(torch.load(head_path, weights_only=True)) == HEAD_KEYS  # the release's key names
    reward = AestheticReward(head=str(head_path), clip_pretrained=str(clip_file[0]), architecture=tiny_arch)
    images = smooth_images(5, 48, 40, seed=4)
    # a local CLIP file is taken as OpenAI ViT-L/14 weights, hence QuickGELU
    reference = raw_open_clip(tiny_arch, clip_file[1], quick_gelu=True)
    with torch.no_grad():
        embedding = reference.encode_image(hand_shortest_edge(images, floor_offset=False))
        expected = head(embedding / embedding.norm(dim=-1, keepdim=True)).squeeze(-1)
    scores = reward.score(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=ATOL_SCORE, rtol=0)
    reward.batch_size = 2
    torch.testing.assert_close(reward.score(images, PROMPTS), scores, atol=1e-6, rtol=0)


def test_aesthetic_bad_head_files_are_named(tmp_path, clip_file, tiny_arch):
    with pytest.raises(FileNotFoundError, match="no-head.pth"):
        AestheticReward(head=str(tmp_path / "no-head.pth"), clip_pretrained=str(clip_file[0]), architecture=tiny_arch)
    wrong = tmp_path / "wrong.pth"
    torch.save(nn.Sequential(nn.Linear(EMBED, 1)).state_dict(), wrong)
    with pytest.raises(ValueError, match="wrong.pth.*layers.0.weight"):
        AestheticReward(head=str(wrong), clip_pretrained=str(clip_file[0]), architecture=tiny_arch)


# ---------------------------------------------------------------- PickScore


def char_clip_tokenizer(max_length: int = 16):
    """A character-level CLIP BPE tokenizer, built in memory as tests/tiny_diffusers.py does
    (without importing diffusers, which costs seconds)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


@pytest.fixture(scope="module")
def pickscore_dirs(tmp_path_factory):
    """save_pretrained folders of a tiny CLIPModel and a CLIPProcessor (the two hub repos)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = char_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        image_size=SIDE, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(2)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # ln(100), PickScore's trained value
    root = tmp_path_factory.mktemp("pickscore")
    model.save_pretrained(root / "model")
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "processor")
    return root / "model", root / "processor", model


@pytest.fixture(scope="module")
def pickscore(pickscore_dirs) -> PickScoreReward:
    return PickScoreReward(model=str(pickscore_dirs[0]), processor=str(pickscore_dirs[1]))


def test_pickscore_is_scaled_cosine_of_clip_embeddings(pickscore, pickscore_dirs):
    model = pickscore_dirs[2]
    images = smooth_images(5, 54, 40, seed=5)  # -> 43 x 32, odd margin 11: floored offset 5
    tokens = char_clip_tokenizer()(PROMPTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        image = model.vision_model(pixel_values=hand_shortest_edge(images, floor_offset=True)).pooler_output
        image = model.visual_projection(image)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    expected = model.logit_scale.exp().detach() * (image * text).sum(dim=-1)
    scores = pickscore.score(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)  # scores are ~100x a cosine
    pickscore.batch_size = 2
    try:
        torch.testing.assert_close(pickscore.score(images, PROMPTS), scores, atol=1e-5, rtol=0)
    finally:
        pickscore.batch_size = 32


@pytest.mark.parametrize("height, width", [(54, 40), (36, 52), (43, 32), (32, 47), (32, 32), (24, 24)])
def test_pickscore_preprocessing_matches_the_clip_image_processor(pickscore, height, width):
    images = smooth_images(2, height, width, seed=6)
    expected = pickscore.processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
    got = preprocess(quantised(images), pickscore.transform)
    assert got.shape == expected.shape == (2, 3, SIDE, SIDE)
    torch.testing.assert_close(got, expected, atol=ATOL_PIL, rtol=0)
    assert (got - expected).abs().mean() < MEAN_PIL


def test_pickscore_keeps_its_logit_scale_in_float32_under_bf16(pickscore_dirs):
    # exp(ln 100) in bfloat16 is 99.0: the scale is read before the model is cast
    bf16 = PickScoreReward(model=str(pickscore_dirs[0]), processor=str(pickscore_dirs[1]), dtype=torch.bfloat16)
    assert bf16.logit_scale == pytest.approx(100.0, rel=1e-4)
    assert float(torch.tensor(4.6052, dtype=torch.bfloat16).exp()) == pytest.approx(99.0, abs=0.6)


def test_pickscore_missing_directory_names_the_path(tmp_path, pickscore_dirs):
    with pytest.raises(FileNotFoundError, match="no-model-here"):
        PickScoreReward(model=str(tmp_path / "no-model-here"), processor=str(pickscore_dirs[1]))


# ---------------------------------------------------------------- shared checks


def test_transform_rejects_bad_settings():
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(size=(SIDE, SIDE), mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode="stretch")
    with pytest.raises(ValueError, match="square"):
        ImageTransform(size=(SIDE, 16), mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode="longest")
