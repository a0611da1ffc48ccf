"""GenEval-style compositional reward: does the image show the objects the prompt asks for, in the
right number, colours and places?

GenEval (Ghosh et al. 2023; the reward of Flow-GRPO's compositional task) detects objects, then
judges the prompt's requirements (see rewards/geneval_prompts.py for the templates and
`evaluate_images.py` of djghosh13/geneval for the original):

- detection: every detection of a class with score > threshold (0.3; 0.9 for prompts tagged
  "counting"), by decreasing score, at most `max_objects` (16) per class, then GenEval's
  class-wise greedy NMS, which drops boxes with IoU >= `max_overlap` against a kept one (its
  default 1.0 turns it off, as in GenEval);
- includes, in order: at least `count` objects of the class; the `count` best must all have the
  colour asked for; each of them must be at the relation ("left of", ...) to every object of the
  earlier include it refers to, which must itself have been matched;
- excludes: fewer than `count` objects of the class (a counting prompt of N excludes N + 1).

Relative position is GenEval's rule on box centres: with offset = centre_a - centre_b and box
sizes (w, h), each axis of the offset shrinks towards 0 by `position_threshold` (0.1) x the sum
of the two boxes' sizes on that axis; the result divided by |offset| gives (dx, dy), and A is
"left of" B when dx < -0.5, "right of" when dx > 0.5, "above" when dy < -0.5, "below" when
dy > 0.5 (image y grows downwards); no relation when both shrunk axes are ~0.

Differences from GenEval, which runs mmdetection's Mask2Former (COCO, closed set) and
open_clip's OpenAI ViT-L/14:
- the detector is OWLv2 from transformers (`google/owlv2-base-patch16-ensemble`), queried with
  "a photo of a {name}" for each of the 80 COCO names (plus any other name a metadata file
  uses). Each predicted box takes the query it scores highest on and sigmoid of that logit as its
  score, as transformers' `post_process_object_detection` decodes it; boxes are in pixels of the
  image as given.
- colours: zero-shot CLIP (transformers `CLIPModel`, `openai/clip-vit-large-patch14`) over
  GenEval's ten colours with its three prompts ("a photo of a {colour} {name}", "a photo of a
  {colour}-colored {name}", "a photo of a {colour} object"; per-prompt embeddings normalised,
  averaged, normalised), argmax of the cosine. GenEval greys out (#999) the pixels outside the
  object's segmentation mask before cropping its box; OWLv2 gives boxes only, so the crop is the
  plain box (clamped to the image), background included.

Reward values: mode="strict" is 1.0 when GenEval's judgment is correct, else 0.0. mode="partial"
(the default) is OUR dense variant, not GenEval's: each include scores the mean of its parts,
count min(found, N) / N; colour (number of its best min(found, N) objects with the colour) / N;
position (pairs of those objects and the target group's objects in the relation) / (N x target
objects), 0 when the target include was not matched. The reward is the mean over includes times,
for each violated exclude of count M with F found, (M - 1) / F (0 for "none allowed", 2/3 for 3
found where two were asked). It lies in [0, 1], grows with every satisfied part, and is 1 exactly
when the strict value is 1. mode="flow_grpo" is Flow-GRPO's training reward (its reward server's
`evaluate_reward`, `flow_grpo_score`): a flat mean of terms, counts scored 1 - |N - F| / N over
every kept detection (below 0 for more than 2N), colour and relation only at the exact count,
a failed relation adding 0 and then 1 as the server does, excludes not read, and the images
judged after a JPEG round trip at quality 75. Its thresholds (0.3, 0.9) and the absence of NMS
are tuned to GenEval's Mask2Former; OWLv2 scores lower and repeats boxes, so with it raise
`max_overlap` below 1 (NMS) and set thresholds for it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import check_images
from .clip_common import (
    check_batch_size,
    looks_like_path,
    preprocess,
    resolve_device,
    resolve_dtype,
    score_in_batches,
    transform_from_hf_processor,
)
from .geneval_prompts import ACCEPTED_FORMS, CLASSES, COLORS, Task, load_metadata, parse_prompt

DETECTOR = "google/owlv2-base-patch16-ensemble"
COLOR_MODEL = "openai/clip-vit-large-patch14"
MODES = ("partial", "strict", "flow_grpo")
POSITION_THRESHOLD = 0.1  # GenEval's default
QUERY_TEMPLATE = "a photo of a {}"
COLOR_TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels, y downwards


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, confidence, box (x1, y1, x2, y2) and, once classified,
    its colour (None before)."""

    label: str
    score: float
    box: Box
    color: str | None = None


@dataclass(frozen=True)
class Judgment:
    """GenEval's verdict on one image (`correct`), our dense value (`partial`), and why not."""

    correct: bool
    partial: float
    reasons: tuple[str, ...] = ()


# ---------------------------------------------------------------- the rules, on detections as data


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """The relations of box A to box B by GenEval's centre rule (see the module docstring)."""
    center_a = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    center_b = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    sizes = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]), abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (center_a[0] - center_b[0], center_a[1] - center_b[1])
    shrunk = [max(abs(o) - threshold * s, 0.0) * ((o > 0) - (o < 0)) for o, s in zip(offset, sizes)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    length = (offset[0] ** 2 + offset[1] ** 2) ** 0.5
    dx, dy = shrunk[0] / length, shrunk[1] / length
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with GenEval's inclusive-pixel convention (a box spans x2 - x1 + 1 pixels)."""

    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3]))
    union = area(*box_a[:4]) + area(*box_b[:4]) - inter
    return inter / union if union else 0.0


def select_detections(
    detections: Iterable[Detection], threshold: float, max_objects: int = 16, max_overlap: float = 1.0
) -> dict[str, list[Detection]]:
    """class -> its kept detections, best first: score > threshold, at most `max_objects`, then
    greedy NMS dropping boxes with IoU >= max_overlap against a kept one (1.0: no NMS)."""
    by_class: dict[str, list[Detection]] = {}
    for detection in detections:
        if detection.score > threshold:
            by_class.setdefault(detection.label, []).append(detection)
    kept: dict[str, list[Detection]] = {}
    for label, items in by_class.items():
        queue = sorted(items, key=lambda d: -d.score)[:max_objects]
        chosen = []
        while queue:
            best = queue.pop(0)
            chosen.append(best)
            if max_overlap < 1:
                queue = [d for d in queue if box_iou(best.box, d.box) < max_overlap]
        kept[label] = chosen
    return kept


def judge(
    task: Task, objects: Mapping[str, Sequence[Detection]], position_threshold: float = POSITION_THRESHOLD
) -> Judgment:
    """GenEval's judgment of detections (class -> detections, best first, as select_detections
    gives) against a task, with our partial value (see the module docstring). Colour
    requirements read `Detection.color` of the class's best min(found, count) detections."""
    correct, reasons, groups, include_scores = True, [], [], []
    for index, req in enumerate(task.include):
        top = list(objects.get(req.name, ()))[: req.count]
        matched = len(top) == req.count
        parts = [len(top) / req.count]
        if not matched:
            reasons.append(f"expected {req.name}>={req.count}, found {len(top)}")
        if req.color is not None:
            missing = [d for d in top if d.color is None]
            if missing:
                raise ValueError(
                    f"GenEval include {index} ({req.color} {req.name}) needs colours, but {len(missing)} detections have none"
                )
            hits = sum(d.color == req.color for d in top)
            parts.append(hits / req.count)
            if matched and hits < req.count:
                matched = False
                reasons.append(
                    f"expected {req.color} {req.name}>={req.count}, found {hits} {req.color} ({', '.join(d.color for d in top)})"
                )
        if req.position is not None:
            relation, target = req.position
            targets = groups[target]
            if targets is None:
                parts.append(0.0)
                if matched:
                    matched = False
                    reasons.append(f"no target for {req.name} to be {relation}")
            else:
                good = sum(
                    relation in relative_position(d.box, t.box, position_threshold) for d in top for t in targets
                )
                parts.append(good / (req.count * len(targets)))
                if matched and good < req.count * len(targets):
                    matched = False
                    reasons.append(
                        f"expected {req.name} {relation} {task.include[target].name} for every pair, {good} of {req.count * len(targets)} are"
                    )
        correct = correct and matched
        groups.append(top if matched else None)
        include_scores.append(sum(parts) / len(parts))
    factor = 1.0
    for req in task.exclude:
        found = len(objects.get(req.name, ()))
        if found >= req.count:
            correct = False
            factor *= (req.count - 1) / found
            reasons.append(f"expected {req.name}<{req.count}, found {found}")
    partial = (sum(include_scores) / len(include_scores) if include_scores else 1.0) * factor
    return Judgment(correct, 1.0 if correct else partial, tuple(reasons))


def flow_grpo_score(
    task: Task, objects: Mapping[str, Sequence[Detection]], position_threshold: float = POSITION_THRESHOLD
) -> tuple[float, bool]:
    """(score, strict) of Flow-GRPO's GenEval training reward (its reward server's
    `evaluate_reward`): the mean of a flat list of terms. Per include with N asked and F kept
    detections (all of them, not the best N): 1 - |N - F| / N (negative beyond 2N); when F != N a
    colour or position requirement adds 0; else colour adds 1 - |N - k| / N for k of the colour,
    and a relation (when still matched) adds 0 at the first pair not in it, then 1 in any case.
    Excludes are not read. strict: every count exact and every colour and relation right."""
    terms: list[float] = []
    strict, groups = True, []
    for req in task.include:
        found = list(objects.get(req.name, ()))
        count = len(found)
        terms.append(1 - abs(req.count - count) / req.count)
        if count != req.count:
            strict = False
            if req.color is not None or req.position is not None:
                terms.append(0.0)
            groups.append(None)
            continue
        matched = True
        if req.color is not None:
            hits = sum(d.color == req.color for d in found)
            terms.append(1 - abs(req.count - hits) / req.count)
            matched = hits == req.count
        if req.position is not None and matched:
            relation, target = req.position
            targets = groups[target]
            if targets is None:
                terms.append(0.0)
                matched = False
            else:
                pairs = ((d, t) for d in found for t in targets)
                if any(relation not in relative_position(d.box, t.box, position_threshold) for d, t in pairs):
                    terms.append(0.0)
                    matched = False
                terms.append(1.0)  # appended whether or not the relation held, as the reward server does
        strict = strict and matched
        groups.append(found if matched else None)
    return (sum(terms) / len(terms) if terms else 0.0), strict


def jpeg_round_trip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Images as 8-bit pixels saved and read back as JPEG at `quality` (PIL's other defaults)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div(255).to(images.device)


# ---------------------------------------------------------------- the models


def _source(value: str | os.PathLike, what: str, default: str) -> str:
    """A hub id as is, or a local directory that must exist (named in the error when missing)."""
    value = os.path.expanduser(os.fspath(value))
    if os.path.isdir(value):
        return value
    if looks_like_path(value) or os.path.exists(value):
        raise FileNotFoundError(
            f"GenEval {what} directory not found: {value!r} (expected a save_pretrained folder or a hub id such as {default!r})"
        )
    return value


def _embeds(output: Any) -> torch.Tensor:
    """Projected embeddings from get_*_features: a tensor (transformers 4) or an output whose
    pooler_output holds them (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# GenEval's score thresholds for its Mask2Former detector (threshold, counting_threshold).
MASK2FORMER_THRESHOLDS = {"threshold": 0.3, "counting_threshold": 0.9}


def warn_foreign_thresholds(values: Mapping[str, float]) -> None:
    """Warn when a threshold is GenEval's Mask2Former value: OWLv2's scores run lower, so the
    count of found objects falls short of what is drawn."""
    foreign = [f"{name}={value:g}" for name, value in values.items() if MASK2FORMER_THRESHOLDS.get(name) == value]
    if foreign:
        warnings.warn(
            f"GenEvalReward: {', '.join(foreign)} is GenEval's value for its Mask2Former detector; OWLv2 scores "
            "clear objects lower (two clear cats at about 0.6 to 0.75) and repeats boxes, so objects may go "
            "uncounted. Pass thresholds (and max_overlap below 1) chosen for OWLv2: docs/rewards.md",
            stacklevel=3,
        )


def _threshold(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"GenEvalReward: {what} must be a number in [0, 1), got {value!r}")
    return float(value)


def crop_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window (x1, y1, x2, y2) of a box: rounded as PIL's crop does, clamped to the
    image, at least one pixel wide and high."""

    def window(low: float, high: float, size: int) -> tuple[int, int]:
        low, high = sorted((int(round(low)), int(round(high))))
        start = min(max(low, 0), size - 1)
        return start, min(max(high, start + 1), size)

    x1, x2 = window(box[0], box[2], width)
    y1, y2 = window(box[1], box[3], height)
    return x1, y1, x2, y2


class GenEvalReward:
    """score(images [B, 3, H, W] in [0, 1], prompts) -> Tensor[B] in [0, 1]: GenEval's judgment of
    each image against its prompt, strict (0 or 1) or partial (see the module docstring).

    Prompts must be in GenEval's templates (rewards/geneval_prompts.py) or listed in `metadata`, a
    GenEval evaluation_metadata.jsonl file (looked up first, by exact prompt text)."""

    name = "geneval"

    def __init__(
        self,
        detector: str = DETECTOR,
        color_model: str = COLOR_MODEL,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        mode: str = "partial",
        metadata: str | os.PathLike | None = None,
        batch_size: int = 16,
        max_overlap: float = 1.0,
        position_threshold: float = POSITION_THRESHOLD,
        jpeg_quality: int | None = None,
    ) -> None:
        """detector: OWLv2 hub id or save_pretrained folder (model and Owlv2Processor);
        color_model: CLIP hub id or folder (CLIPModel and CLIPProcessor); threshold,
        counting_threshold: detection scores must exceed them (the latter for "counting" tasks);
        max_objects: detections kept per class; max_overlap: NMS IoU (1.0 = none);
        position_threshold: GenEval's relative-position margin; jpeg_quality: judge the images
        after a JPEG round trip at this quality (mode=flow_grpo: 75 unless given, as Flow-GRPO's
        client sends them; None otherwise)."""
        if mode not in MODES:
            raise ValueError(f"GenEvalReward: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if jpeg_quality is None and mode == "flow_grpo":
            jpeg_quality = 75
        if jpeg_quality is not None and (isinstance(jpeg_quality, bool) or not 1 <= int(jpeg_quality) <= 100):
            raise ValueError(f"GenEvalReward: jpeg_quality must be an int in [1, 100] or None, got {jpeg_quality!r}")
        self.jpeg_quality = jpeg_quality
        self.threshold = _threshold(threshold, "threshold")
        self.counting_threshold = _threshold(counting_threshold, "counting_threshold")
        warn_foreign_thresholds({"threshold": self.threshold, "counting_threshold": self.counting_threshold})
        if not isinstance(max_objects, int) or isinstance(max_objects, bool) or max_objects < 1:
            raise ValueError(f"GenEvalReward: max_objects must be a positive int, got {max_objects!r}")
        self.max_objects = max_objects
        if (
            isinstance(max_overlap, bool)
            or not isinstance(max_overlap, (int, float))
            or not 0.0 < float(max_overlap) <= 1.0
        ):
            raise ValueError(f"GenEvalReward: max_overlap must be in (0, 1] (1 turns NMS off), got {max_overlap!r}")
        self.max_overlap = float(max_overlap)
        if (
            isinstance(position_threshold, bool)
            or not isinstance(position_threshold, (int, float))
            or position_threshold < 0
        ):
            raise ValueError(f"GenEvalReward: position_threshold must be a number >= 0, got {position_threshold!r}")
        self.position_threshold = float(position_threshold)
        self.batch_size = check_batch_size(batch_size)
        self.metadata_path = None if metadata is None else os.fspath(metadata)
        self.metadata = {} if metadata is None else load_metadata(metadata)
        self._tasks: dict[str, Task] = dict(self.metadata)
        # every COCO name, then any other name the metadata uses (OWLv2 is open-vocabulary)
        self.vocabulary = tuple(dict.fromkeys(list(CLASSES) + [n for t in self.metadata.values() for n in t.names]))

        from transformers import CLIPModel, CLIPProcessor, Owlv2ForObjectDetection, Owlv2Processor

        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        source = _source(detector, "detector", DETECTOR)
        self.detector_processor = Owlv2Processor.from_pretrained(source)
        self.detector = (
            Owlv2ForObjectDetection.from_pretrained(source)
            .to(device=self.device, dtype=self.dtype)
            .eval()
            .requires_grad_(False)
        )
        source = _source(color_model, "color_model", COLOR_MODEL)
        self.color_processor = CLIPProcessor.from_pretrained(source)
        self.color_model = (
            CLIPModel.from_pretrained(source).to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        )
        self.color_transform = transform_from_hf_processor(self.color_processor.image_processor)
        self._color_classifiers: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            self.query_embeds = self._query_embeds([QUERY_TEMPLATE.format(n) for n in self.vocabulary])  # [Q, D]

    # -------------------------------------------------------- prompts

    def task(self, prompt: str) -> Task:
        """The task of a prompt: its metadata record, else its GenEval template; else an error
        naming the prompt and the accepted forms."""
        if prompt not in self._tasks:
            try:
                self._tasks[prompt] = parse_prompt(prompt)
            except ValueError:
                where = (
                    f"not in the metadata file {self.metadata_path!r} and"
                    if self.metadata_path
                    else "has no metadata (metadata= a GenEval JSONL file) and is"
                )
                raise ValueError(
                    f"reward {self.name!r}: prompt {prompt!r} {where} not in GenEval's templates; {ACCEPTED_FORMS}"
                ) from None
        return self._tasks[prompt]

    # -------------------------------------------------------- detection

    def _query_embeds(self, texts: list[str]) -> torch.Tensor:
        """Normalised OWLv2 text-query embeddings [Q, D], as the detector's forward computes them."""
        length = int(self.detector.config.text_config.max_position_embeddings)
        tokens = self.detector_processor.tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        ).to(self.device)
        embeds = _embeds(
            self.detector.owlv2.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )
        return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True)

    def raw_detections(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores [b, P], query indices [b, P], boxes [b, P, 4] as x1, y1, x2, y2 pixels) of every
        OWLv2 box of each image: the best query per box and the sigmoid of its logit."""
        images = images.to(self.device, torch.float32)
        pixels = self.detector_processor.image_processor(images=list(images), do_rescale=False, return_tensors="pt")[
            "pixel_values"
        ]
        feature_map, _ = self.detector.image_embedder(pixel_values=pixels.to(self.device, self.dtype))
        b, h, w, d = feature_map.shape
        features = feature_map.reshape(b, h * w, d)
        logits, _ = self.detector.class_predictor(features, self.query_embeds.to(features.dtype).expand(b, -1, -1))
        best = logits.float().max(dim=-1)
        cx, cy, bw, bh = self.detector.box_predictor(features, feature_map).float().unbind(-1)
        # OWLv2 pads images to a square (bottom, right) before resizing: boxes scale by the long side
        side = float(max(images.shape[-2:]))
        boxes = torch.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], dim=-1) * side
        return torch.sigmoid(best.values), best.indices, boxes

    def detect(
        self, images: torch.Tensor, thresholds: Sequence[float] | float | None = None
    ) -> list[dict[str, list[Detection]]]:
        """Per image, class -> kept detections best first (score > its threshold, default
        `threshold`; at most max_objects; NMS at max_overlap)."""
        count = images.shape[0]
        if thresholds is None or isinstance(thresholds, (int, float)):
            thresholds = [self.threshold if thresholds is None else float(thresholds)] * count
        with torch.no_grad():
            scores, labels, boxes = (t.cpu() for t in self.raw_detections(images))
        results = []
        for i in range(count):
            keep = torch.nonzero(scores[i] > thresholds[i]).flatten().tolist()
            found = [
                Detection(self.vocabulary[int(labels[i, k])], float(scores[i, k]), tuple(boxes[i, k].tolist()))
                for k in keep
            ]
            results.append(select_detections(found, thresholds[i], self.max_objects, self.max_overlap))
        return results

    # -------------------------------------------------------- colour

    def _color_classifier(self, name: str) -> torch.Tensor:
        """[colours, D] zero-shot weights for objects called `name` (cached)."""
        if name not in self._color_classifiers:
            texts = [t.format(color=c, name=name) for c in COLORS for t in COLOR_TEMPLATES]
            length = int(self.color_model.config.text_config.max_position_embeddings)
            tokens = self.color_processor.tokenizer(
                texts, padding=True, truncation=True, max_length=length, return_tensors="pt"
            ).to(self.device)
            embeds = F.normalize(_embeds(self.color_model.get_text_features(**tokens)).float(), dim=-1)
            weights = embeds.reshape(len(COLORS), len(COLOR_TEMPLATES), -1).mean(dim=1)
            self._color_classifiers[name] = F.normalize(weights, dim=-1)
        return self._color_classifiers[name]

    def classify_colors(self, image: torch.Tensor, detections: Sequence[Detection]) -> list[str]:
        """GenEval's colour of each detection in one image [3, H, W]: CLIP zero-shot on its box crop."""
        if not detections:
            return []
        height, width = image.shape[-2:]
        crops = []
        for detection in detections:
            x1, y1, x2, y2 = crop_box(detection.box, height, width)
            crops.append(preprocess(image[None, :, y1:y2, x1:x2], self.color_transform, self.device, self.dtype))
        with torch.no_grad():
            features = F.normalize(
                _embeds(self.color_model.get_image_features(pixel_values=torch.cat(crops))).float(), dim=-1
            )
            colors = []
            for feature, detection in zip(features, detections):
                colors.append(COLORS[int((self._color_classifier(detection.label) @ feature).argmax())])
        return colors

    # -------------------------------------------------------- judging

    def judge_images(self, images: torch.Tensor, prompts: Sequence[str]) -> list[Judgment]:
        """GenEval's judgment of each image against its prompt, with reasons (no batching)."""
        return [judge(task, objects, self.position_threshold) for task, objects in self.observe(images, prompts)]

    def observe(self, images: torch.Tensor, prompts: Sequence[str]) -> list[tuple[Task, dict[str, list[Detection]]]]:
        """Per image, its task and class -> kept detections (the best `count` with their colour
        where the task asks for one), after the JPEG round trip when one is set."""
        check_images(images, prompts, self.name)
        if self.jpeg_quality is not None:
            images = jpeg_round_trip(images, int(self.jpeg_quality))
        tasks = [self.task(p) for p in prompts]
        thresholds = [self.counting_threshold if t.tag == "counting" else self.threshold for t in tasks]
        observed = []
        for image, task, objects in zip(images, tasks, self.detect(images, thresholds)):
            objects = {name: objects.get(name, []) for name in task.names}
            for name in {r.name for r in task.include if r.color is not None}:
                count = max(r.count for r in task.include if r.name == name and r.color is not None)
                top = objects[name][:count]
                colors = self.classify_colors(image, top)
                objects[name] = [dataclasses.replace(d, color=c) for d, c in zip(top, colors)] + objects[name][count:]
            observed.append((task, objects))
        return observed

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-image reward (float32 [B] on the CPU): in [0, 1], or for mode=flow_grpo at most 1."""
        check_images(images, prompts, self.name)
        for prompt in prompts:  # fail on an unknown prompt before running any model
            self.task(prompt)
        return score_in_batches(self._score_batch, images, prompts, self.batch_size)

    def _score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.mode == "flow_grpo":
            observed = self.observe(images, prompts)
            values = [flow_grpo_score(task, objects, self.position_threshold)[0] for task, objects in observed]
            return torch.tensor(values, dtype=torch.float32)
        judgments = self.judge_images(images, prompts)
        values = [float(j.correct) if self.mode == "strict" else j.partial for j in judgments]
        return torch.tensor(values, dtype=torch.float32)

    __call__ = score
