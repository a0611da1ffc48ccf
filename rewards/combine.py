"""Weighted combinations of rewards, pointwise and pairwise, each term kept for logging.

A spec is one reward name or a sum of weighted names, `"0.7*pickscore + 0.3*ocr"`. A pairwise
term (a judge that compares two images) becomes a per-sample value through win rates: every
pair of samples within a group (one prompt) is judged once, and a sample's value is the share
of its comparisons it won (Pref-GRPO). The total is the weighted sum of the terms' values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import INVALID_POLICIES, check_scores, is_pairwise, raise_if_invalid, reward_name
from .registry import load
from .win_rates import win_rates, within_group_pairs

_TERM = re.compile(r"^\s*(?:(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*)?(?P<name>[^\s*]+)\s*$")


# Published scales, as NAME@PROJECT in a reward spec: the factor that turns our score into theirs.
SCALES = {
    ("pickscore", "flow_grpo"): 1 / 26,  # Flow-GRPO trains on PickScore / 26
    ("pickscore", "dance_grpo"): 1 / 100,  # DanceGRPO on the raw cosine (PickScore's logit scale is 100)
    ("clip", "flow_grpo"): 100 / 30,  # Flow-GRPO's CLIP score: 100 cos / 30
    ("jpeg_compressibility", "flow_grpo"): 1 / 500,  # Flow-GRPO's -size / 500 (size in kB)
    ("jpeg_incompressibility", "flow_grpo"): 1.0,  # its incompressibility is the raw size in kB
}


def scaled_name(name: str) -> tuple[str, float]:
    """(reward name, factor) of "name" (factor 1) or "name@project" (a published scale)."""
    if "@" not in name or name.startswith(("remote:", "http")):
        return name, 1.0
    base, _, project = name.partition("@")
    if (base, project) not in SCALES:
        known = ", ".join(f"{b}@{p}" for b, p in SCALES)
        raise ValueError(f"no published scale {name!r}; known: {known}")
    return base, SCALES[(base, project)]


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """[(name, weight)] from "name" or "w1*name1 + w2*name2" (a weight defaults to 1); a name may
    carry a published scale, "pickscore@flow_grpo", which multiplies its weight."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward spec {spec!r}: expected a reward name or a sum like '0.7*pickscore + 0.3*ocr'")
    terms = []
    for part in spec.split("+"):
        match = _TERM.match(part)
        if match is None:
            raise ValueError(
                f"reward spec {spec!r}: cannot read the term {part.strip()!r}; expected NAME or WEIGHT*NAME"
            )
        weight = float(match["weight"]) if match["weight"] else 1.0
        name, factor = scaled_name(match["name"])
        terms.append((name, weight * factor))
    names = [name for name, _ in terms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"reward spec {spec!r} names {repeated} more than once; give each reward once with its total weight"
        )
    return terms


@dataclass
class RewardTerm:
    name: str
    weight: float
    reward: object

    @property
    def pairwise(self) -> bool:
        return is_pairwise(self.reward)


@dataclass
class RewardScores:
    """Per-sample rewards: the weighted total, each term's own values (win rates for pairwise
    terms), and which samples every term scored validly."""

    total: torch.Tensor  # [B] float32
    components: dict[str, torch.Tensor]  # name -> [B] float32
    valid: torch.Tensor  # [B] bool


class RewardSet:
    """Several weighted rewards scored together; see the module docstring."""

    def __init__(self, terms: Sequence[RewardTerm], on_invalid: str = "error", batch_size: int = 64) -> None:
        if on_invalid not in INVALID_POLICIES:
            raise ValueError(f"on_invalid must be one of {INVALID_POLICIES}, got {on_invalid!r}")
        if not terms:
            raise ValueError("a RewardSet needs at least one reward")
        self.terms = list(terms)
        self.on_invalid = on_invalid
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        spec: str,
        options: dict | None = None,
        device=None,
        dtype=None,
        on_invalid: str = "error",
        batch_size: int = 64,
    ) -> RewardSet:
        """Build every reward of a spec; `options` maps a reward name to its keyword options."""
        options = dict(options or {})
        parsed = parse_reward_spec(spec)
        unknown = sorted(set(options) - {name for name, _ in parsed})
        if unknown:
            raise ValueError(f"reward options given for {unknown}, which the reward spec {spec!r} does not name")
        terms = []
        for name, weight in parsed:
            kwargs = dict(options.get(name) or {})
            if name.startswith("remote:"):
                kwargs.setdefault("on_invalid", "drop")  # NaN comes back as NaN; this set applies its own policy
            terms.append(RewardTerm(name, weight, load(name, device=device, dtype=dtype, **kwargs)))
        return cls(terms, on_invalid=on_invalid, batch_size=batch_size)

    @classmethod
    def of(cls, reward: object, name: str | None = None, **kwargs) -> RewardSet:
        """A set of one already-built reward (weight 1)."""
        return cls([RewardTerm(name or reward_name(reward), 1.0, reward)], **kwargs)

    @property
    def pairwise(self) -> bool:
        return any(term.pairwise for term in self.terms)

    def pointwise_only(self) -> RewardSet | None:
        """The set of this set's pointwise terms (same weights), or None when all are pairwise."""
        terms = [term for term in self.terms if not term.pairwise]
        return RewardSet(terms, self.on_invalid, self.batch_size) if terms else None

    def score_pointwise(
        self, images: torch.Tensor, prompts: Sequence[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (values [B], valid [B]) for every pointwise term, batch_size images at a time."""
        out = {}
        for term in self.terms:
            if not term.pairwise:
                chunks = [
                    (
                        term.reward.score(images[s : s + self.batch_size], list(prompts[s : s + self.batch_size])),
                        min(self.batch_size, images.shape[0] - s),
                    )
                    for s in range(0, images.shape[0], self.batch_size)
                ]
                out[term.name] = self._checked(term.name, chunks, "samples")
        return out

    def judge_pairs(
        self,
        term: RewardTerm,
        images: torch.Tensor,
        prompts: Sequence[str],
        index_a: torch.Tensor,
        index_b: torch.Tensor,
    ) -> torch.Tensor:
        """[P] probability that images[index_a[k]] beats images[index_b[k]], batch_size pairs at
        a time. A failed judgment (NaN or inf) is an error naming the pairs, or a tie (0.5) under
        on_invalid="drop"; a probability outside [0, 1] is always an error."""
        chunks = []
        for start in range(0, len(index_a), self.batch_size):
            a, b = index_a[start : start + self.batch_size], index_b[start : start + self.batch_size]
            chunks.append((term.reward.compare(images[a], images[b], [prompts[int(i)] for i in a]), len(a)))
        probs, valid = self._checked(term.name, chunks, "pairs")
        outside = valid & ((probs < 0) | (probs > 1))
        if bool(outside.any()):
            raise ValueError(
                f"reward {term.name!r} returned probabilities outside [0, 1] for pairs {torch.nonzero(outside).flatten().tolist()[:20]}"
            )
        return torch.where(valid, probs, torch.full_like(probs, 0.5))

    def _checked(self, name: str, chunks: list, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, valid) of chunked raw outputs; NaN/inf named by index in the whole batch."""
        checked = [check_scores(raw, count, name, on_invalid="drop") for raw, count in chunks]
        values = torch.cat([v for v, _ in checked]) if checked else torch.zeros(0)
        valid = torch.cat([ok for _, ok in checked]) if checked else torch.zeros(0, dtype=torch.bool)
        if self.on_invalid == "error":
            raise_if_invalid(valid, name, what)
        return values, valid

    def combine(self, components: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> RewardScores:
        """The weighted total of the terms' (values, valid)."""
        first = next(iter(components.values()))[0]
        total = torch.zeros_like(first)
        valid = torch.ones_like(first, dtype=torch.bool)
        for term in self.terms:
            values, ok = components[term.name]
            total = total + term.weight * values
            valid &= ok
        return RewardScores(total, {name: values for name, (values, _) in components.items()}, valid)

    def evaluate(
        self, images: torch.Tensor, prompts: Sequence[str], group_ids: torch.Tensor | None = None
    ) -> RewardScores:
        """Score a batch in one process: pointwise terms per image, pairwise terms by win rates
        within groups (all images one group when `group_ids` is None)."""
        components = self.score_pointwise(images, prompts)
        if self.pairwise:
            count = images.shape[0]
            group_ids = (
                torch.zeros(count, dtype=torch.long)
                if group_ids is None
                else torch.as_tensor(group_ids).flatten().cpu()
            )
            index_a, index_b = within_group_pairs(group_ids)
            for term in self.terms:
                if term.pairwise:
                    probs = self.judge_pairs(term, images, prompts, index_a, index_b)
                    components[term.name] = (
                        win_rates(index_a, index_b, probs, count, unjudged="neutral"),
                        torch.ones(count, dtype=torch.bool),
                    )
        return self.combine(components)
