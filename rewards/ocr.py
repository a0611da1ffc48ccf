"""OCR text accuracy, the reward of Flow-GRPO's text-rendering task.

The target is the text in double quotes in the prompt (`"..."` or curly `“...”`; the first quoted
part, as Flow-GRPO's `prompt.split('"')[1]`, or all of them with `join_quotes=True`). RapidOCR reads
the image; the texts of its boxes with confidence >= `min_confidence` are joined in reading order
(top to bottom, left to right). Both texts lose their whitespace and, unless `case_sensitive`,
their case. The reward is 1 when the target occurs inside the recognised text, else
1 - min(edit distance, len(target)) / len(target), so it lies in [0, 1].

Flow-GRPO ran PaddleOCR with its English recogniser; RapidOCR runs the same family (PP-OCRv4
detector and recogniser, Chinese and English) through onnxruntime, so readings may differ slightly.
A prompt with no quoted text fails, naming the prompt (Flow-GRPO fails there too, with an
IndexError). Images go to the OCR at their own size: RapidOCR's detector already resizes the short
side to 736 px and its recogniser resizes each text line to 48 px high; bicubic upscaling of 32-64
px renders beforehand did not read better (worse at 32 px), so there is none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from .base import check_images, to_uint8

# A double-quoted ("...") or curly-quoted (“...”) part; single quotes are not quotes here (Flow-GRPO
# splits on '"' only, and apostrophes would be misread as quotes).
_QUOTED = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d')


def quoted_texts(prompt: str) -> list[str]:
    """The quoted parts of a prompt in order, `"..."` or `“...”` (an unclosed quote is not one)."""
    return [m[1] if m[1] is not None else m[2] for m in _QUOTED.finditer(prompt)]  # group 1: "...", 2: “...”


def normalize_text(text: str, case_sensitive: bool = False) -> str:
    """The text without whitespace, lower-cased unless `case_sensitive` (Flow-GRPO's comparison form)."""
    text = "".join(text.split())
    return text if case_sensitive else text.lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a  # one row of len(b) + 1 entries is enough
    previous = list(range(len(b) + 1))  # distances from a[:0] to each prefix of b
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def text_accuracy(recognized: str, target: str, case_sensitive: bool = False) -> float:
    """Flow-GRPO's OCR reward in [0, 1] for the recognised text against the target text."""
    given = target
    recognized = normalize_text(recognized, case_sensitive)
    target = normalize_text(target, case_sensitive)
    if not target:
        raise ValueError(f"OCR target text {given!r} is empty without whitespace; expected at least one character")
    # Flow-GRPO (flow_grpo/ocr.py): the target inside a longer reading counts as exact, and the
    # distance is capped at len(target) so that extra recognised characters cannot go below 0.
    distance = 0 if target in recognized else min(edit_distance(recognized, target), len(target))
    return 1.0 - distance / len(target)


class OCRReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B] in [0, 1]: how well the image
    shows the prompt's quoted text; RapidOCR on the CPU (onnxruntime)."""

    name = "ocr"

    def __init__(
        self,
        device: str | torch.device | None = None,
        min_confidence: float = 0.5,
        case_sensitive: bool = False,
        join_quotes: bool = False,
        num_threads: int | None = None,
    ) -> None:
        """Build the RapidOCR engine (its ONNX models ship in the wheel; nothing is downloaded).

        device: accepted for the common reward signature and ignored (onnxruntime runs on the CPU).
        min_confidence: recognised boxes below it are dropped (0.5 is PaddleOCR's drop_score, which
            Flow-GRPO ran with). join_quotes: False scores the first quoted part only, as Flow-GRPO;
            True scores all quoted parts joined in prompt order. num_threads: onnxruntime threads
            per session (None: onnxruntime's default)."""
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"OCRReward: min_confidence must be in [0, 1], got {min_confidence!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"OCRReward: num_threads must be a positive int or None, got {num_threads!r}")
        try:
            from rapidocr_onnxruntime import RapidOCR  # imported here: importing rewards.ocr stays cheap
        except ImportError as error:
            raise ImportError(
                f"the ocr reward needs rapidocr-onnxruntime, a core dependency on Python < 3.13 (its wheels stop there): "
                f"pip install rapidocr-onnxruntime ({error})"
            ) from None

        self.device = device  # unused: the engine is CPU onnxruntime
        self.min_confidence = float(min_confidence)
        self.case_sensitive = case_sensitive
        self.join_quotes = join_quotes
        threads = -1 if num_threads is None else num_threads  # -1 is RapidOCR's "onnxruntime default"
        # use_cls=False: no 180-degree line classifier, as Flow-GRPO (use_angle_cls=False, cls=False).
        self.engine = RapidOCR(
            use_cls=False,
            text_score=self.min_confidence,
            intra_op_num_threads=threads,
            inter_op_num_threads=threads,
        )

    def target(self, prompt: str, index: int = 0) -> str:
        """The text prompt `index` asks for; fails naming the prompt if it quotes nothing."""
        parts = quoted_texts(prompt)
        if not parts:
            raise ValueError(
                f'reward {self.name!r}: prompt {index} has no text in double quotes ("..." or \u201c...\u201d) to compare the image with: {prompt!r}'
            )
        text = " ".join(parts) if self.join_quotes else parts[0]
        if not normalize_text(text):
            raise ValueError(
                f"reward {self.name!r}: prompt {index} quotes no characters (only {text!r}); expected some text to render: {prompt!r}"
            )
        return text

    def recognize(self, images: torch.Tensor) -> list[str]:
        """The text RapidOCR reads in each image, boxes joined in reading order with no separator."""
        texts = []
        for array in to_uint8(images):  # [H, W, 3] uint8 RGB
            # RapidOCR takes a numpy image as OpenCV's BGR.
            result, _ = self.engine(np.ascontiguousarray(array[..., ::-1]))
            # Each box is [corners, text, confidence]; RapidOCR already dropped those below text_score.
            texts.append("".join(str(box[1]) for box in result or []))
        return texts

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-image text accuracy in [0, 1] (float32 [B] on the CPU)."""
        check_images(images, prompts, self.name)
        targets = [self.target(prompt, i) for i, prompt in enumerate(prompts)]  # fail before OCR
        recognized = self.recognize(images)
        values = [text_accuracy(read, want, self.case_sensitive) for read, want in zip(recognized, targets)]
        return torch.tensor(values, dtype=torch.float32)

    __call__ = score
