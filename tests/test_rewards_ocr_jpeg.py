"""OCR text accuracy (real RapidOCR on text rendered with PIL, nothing downloaded) and DDPO's JPEG
(in)compressibility against a hand computation with PIL."""

import functools
import io
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from flowrl.rewards.jpeg import JPEGReward, jpeg_size_kb
from flowrl.rewards.ocr import edit_distance, normalize_text, quoted_texts, text_accuracy
from flowrl.rewards.registry import load


def skip_without_rapidocr() -> None:
    """rapidocr-onnxruntime is a core dependency where its wheels exist (Python < 3.13): only there is its absence a failure."""
    if sys.version_info >= (3, 13):
        pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime has no wheels for Python >= 3.13")


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]


def render(text: str, size: int = 128, font_size: int = 20) -> torch.Tensor:
    """Black text (lines split on newlines) centred on a white square."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)  # FreeType font shipped with Pillow
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    origin = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
    draw.multiline_text(origin, text, fill="black", font=font, align="center")
    return to_tensor(image)


# ---------------------------------------------------------------- edit distance and text rule


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("", "", 0),
        ("abc", "", 3),  # three deletions
        ("", "abc", 3),  # three insertions
        ("abc", "abc", 0),
        ("kitten", "sitting", 3),  # k->s, e->i, insert g
        ("flaw", "lawn", 2),  # delete f, insert n
        ("ab", "ba", 2),  # no transpositions: two substitutions
        ("intention", "execution", 5),  # the textbook example (Jurafsky & Martin)
        ("helo", "hello", 1),  # one insertion
    ],
)
def test_edit_distance_hand_cases(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_edit_distance_matches_recursive_definition():
    @functools.cache
    def reference(a: str, b: str) -> int:  # the definition, read literally
        if not a or not b:
            return len(a) + len(b)
        return min(reference(a[1:], b) + 1, reference(a, b[1:]) + 1, reference(a[1:], b[1:]) + (a[0] != b[0]))

    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        assert edit_distance(a, b) == reference(a, b), (a, b)


def test_quoted_texts():
    assert quoted_texts('a neon sign that says "Hello World" at night') == ["Hello World"]
    assert quoted_texts("a poster reading \u201cBig Sale\u201d in red") == ["Big Sale"]  # curly quotes
    assert quoted_texts('signs saying "OPEN" and \u201cCLOSED\u201d and "24h"') == ["OPEN", "CLOSED", "24h"]
    assert quoted_texts("the child's sign says 'hi'") == []  # single quotes are not quotes
    assert quoted_texts('an unclosed "quote') == []
    assert quoted_texts("no text at all") == []


def test_normalize_text():
    assert normalize_text(" Hello \t World\n") == "helloworld"
    assert normalize_text("Hello World", case_sensitive=True) == "HelloWorld"


def test_text_accuracy_pinned_values():
    assert text_accuracy("HelloWorld", "Hello World") == 1.0  # spaces and case do not count
    assert text_accuracy("xx OPEN 24 xx", "open 24") == 1.0  # target inside the reading: exact (Flow-GRPO)
    assert text_accuracy("helo", "hello") == pytest.approx(1 - 1 / 5)  # one insertion in 5 characters
    assert text_accuracy("", "abc") == 0.0  # nothing read: distance 3 of 3
    assert text_accuracy("zzzzzzzzzz", "abc") == 0.0  # distance 10 capped at len(target) = 3
    assert text_accuracy("CAFE", "cafe", case_sensitive=True) == 0.0  # 4 substitutions of 4
    assert text_accuracy("Cafe", "cafe", case_sensitive=True) == pytest.approx(1 - 1 / 4)
    with pytest.raises(ValueError, match="empty"):
        text_accuracy("abc", "   ")


# ---------------------------------------------------------------- OCR for real


@pytest.fixture(scope="module")
def ocr():
    skip_without_rapidocr()
    from flowrl.rewards.ocr import OCRReward

    return OCRReward(num_threads=1)


# (rendered text, prompt, expected score): what RapidOCR reads is checked first, so a misreading
# shows as such rather than as a wrong score.
CASES = [
    ("Hello World", 'a neon sign that says "Hello World" at night', "HelloWorld", 1.0),
    ("CAFE", "a shop front with \u201ccafe\u201d above the door", "CAFE", 1.0),  # curly quotes, any case
    ("Hello\nWorld", 'a poster with "hello world" on two lines', "HelloWorld", 1.0),  # two boxes, top to bottom
    ("EXIT", 'a green sign with "EX" on it', "EXIT", 1.0),  # target inside the reading counts as exact
    ("OPEN", 'a door sign reading "OPEN 24"', "OPEN", 1 - 2 / 6),  # "open" vs "open24": 2 insertions of 6
    ("ZEBRA", 'a "zebra crossing"', "ZEBRA", 1 - 8 / 13),  # "zebra" vs "zebracrossing": 8 of 13
    ("", 'a blank wall with "Nothing" painted', "", 0.0),  # nothing read: distance = len(target)
]


@pytest.fixture(scope="module")
def batch():
    return torch.stack([render(text) for text, *_ in CASES]), [prompt for _, prompt, *_ in CASES]


def test_ocr_reads_the_rendered_text(ocr, batch):
    images, _ = batch
    assert ocr.recognize(images) == [read for _, _, read, _ in CASES]


def test_ocr_scores_batch(ocr, batch):
    images, prompts = batch
    scores = ocr.score(images, prompts)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (len(CASES),)
    expected = torch.tensor([value for *_, value in CASES], dtype=torch.float32)
    torch.testing.assert_close(scores, expected)
    # One image at a time gives the same values, and swapping prompts scores the other way round.
    single = torch.cat([ocr.score(images[i : i + 1], prompts[i : i + 1]) for i in (0, 4)])
    torch.testing.assert_close(single, expected[[0, 4]])
    swapped = ocr.score(images[[0, 4]], [prompts[4], prompts[0]])
    # "helloworld" read, "open24" wanted: only one "o" can line up, so 9 edits, capped at 6 -> 0.
    # "open" read, "helloworld" wanted: one letter ("o" or "e") lines up, 3 substitutions + 6
    # insertions = 9 -> 1 - 9/10.
    assert swapped[0] == 0.0
    assert swapped[1] == pytest.approx(1 - 9 / 10)


def test_ocr_options(batch):
    skip_without_rapidocr()
    from flowrl.rewards.ocr import OCRReward

    images, prompts = batch
    strict = OCRReward(case_sensitive=True, min_confidence=1.0, num_threads=1, device="cuda")  # device is ignored
    assert strict.recognize(images[:1]) == [""]  # every box is below confidence 1.0
    assert OCRReward(join_quotes=True, num_threads=1).target('"OPEN" and \u201c24\u201d') == "OPEN 24"
    with pytest.raises(ValueError, match="min_confidence"):
        OCRReward(min_confidence=1.5)
    with pytest.raises(ValueError, match="num_threads"):
        OCRReward(num_threads=0)


def test_ocr_rejects_bad_input(ocr, batch):
    images, prompts = batch
    with pytest.raises(ValueError, match=r"prompt 1 has no text in double quotes"):
        ocr.score(images[:2], [prompts[0], "a sign with no quoted text"])
    with pytest.raises(ValueError, match=r"prompt 0 quotes no characters"):
        ocr.score(images[:1], ['a sign saying " "'])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ocr.score(images[0], prompts[:1])
    with pytest.raises(ValueError, match="2 prompts"):
        ocr.score(images[:1], prompts[:2])
    assert ocr.score(images[:0], []).shape == (0,)


def test_importing_rewards_does_not_import_ocr_engine():
    code = "import sys, rewards.ocr, rewards.jpeg; print(sorted({'rapidocr_onnxruntime', 'cv2', 'onnxruntime'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registry_builds_ocr():
    skip_without_rapidocr()
    reward = load("ocr", device="cpu", num_threads=1)
    assert reward.name == "ocr" and callable(reward.score)


# ---------------------------------------------------------------- JPEG


def noise_images(count: int = 2, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator).float() / 255  # exact 8-bit values


def test_jpeg_size_equals_hand_computation():
    images = noise_images()
    scores = JPEGReward().score(images, ["", ""])
    for image, value in zip(images, scores):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # [H, W, 3]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        assert value.item() == pytest.approx(len(buffer.getvalue()) / 1000, rel=1e-6)  # kB of 1000 bytes
        assert jpeg_size_kb(pixels) == len(buffer.getvalue()) / 1000
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (2,)


def test_jpeg_flat_is_more_compressible_than_noise():
    images = torch.cat([torch.full((1, 3, 64, 64), 0.5), noise_images(1)])
    size = JPEGReward(sign=1.0).score(images, ["flat", "noise"])
    assert size[0] < size[1] / 5
    minus = JPEGReward(sign=-1.0).score(images, ["flat", "noise"])
    torch.testing.assert_close(minus, -size)
    assert minus[0] > minus[1]  # compressibility prefers the flat image
    lower = JPEGReward(quality=50).score(images[1:], ["noise"])
    assert lower[0] < size[1]  # a lower quality gives a smaller file


def test_jpeg_names_registry_and_errors():
    assert JPEGReward().name == "jpeg_incompressibility"
    assert JPEGReward(sign=-1).name == "jpeg_compressibility"
    assert load("jpeg_compressibility").sign == -1.0 and load("jpeg_incompressibility").sign == 1.0
    assert load("jpeg_compressibility").name == "jpeg_compressibility"
    with pytest.raises(ValueError, match="sign must be"):
        JPEGReward(sign=2.0)
    with pytest.raises(ValueError, match="quality must be"):
        JPEGReward(quality=0)
    with pytest.raises(ValueError, match=r"values in"):
        JPEGReward().score(torch.full((1, 3, 8, 8), 2.0), ["x"])
