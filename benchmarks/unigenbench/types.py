"""The records UniGenBench's stages pass along: prompts with their test points, and verdicts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestPoint:
    """One thing a judge checks in an image, e.g. name "Attribute - Quantity", description
    "two adorable giant pandas"."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    description: str

    @property
    def primary(self) -> str:
        """The primary dimension: the name before the first " - " ("Attribute"); a name
        without one ("Style") is its own primary dimension."""
        return self.name.split("-", 1)[0].strip()

    @property
    def sub(self) -> str:
        """The sub-dimension: the full name."""
        return self.name.strip()


@dataclass(frozen=True)
class BenchPrompt:
    """A row of a prompt file: its id, text, theme (Primary Categories), subtheme (Secondary
    Categories) and the test points the judge checks."""

    index: int
    text: str
    theme: str
    subtheme: str
    testpoints: tuple[TestPoint, ...]
    subject: str = ""
    sentence_structure: str = ""


@dataclass(frozen=True)
class Verdict:
    """The judge's binary verdict on one test point of one image (file name `{index}_{k}.png`)."""

    image: str
    prompt_index: int
    testpoint: str  # TestPoint.name
    correct: bool
    explanation: str = ""
