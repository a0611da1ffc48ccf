"""A SQLite store of UniGenBench judgments, so that judging can stop anywhere and resume.

    store = JudgmentStore("judgments.sqlite")
    store.record("12_3.png", 12, verdicts, model="QwenVL", raw=answer_text)
    store.done_images()          # {"12_3.png", ...}
    store.missing(["12_3.png", "13_0.png"])  # ["13_0.png"]

Each judged image is written in ONE transaction: a row in `images` (the prompt index, the number
of test points, the judge model, the raw answer and its SHA-256, the time) and one row per test
point in `verdicts` (its position in the prompt's list, name, verdict, explanation, model, answer
hash, time), all or nothing. A process killed in the middle of `record` leaves the image absent,
never half there, and `done_images()` reads only the `images` table, which is written in the same
transaction as the verdicts. Verdicts are keyed by (image, position) because a prompt may list the
same test point name twice (two rows of the public long files do).

The database runs in WAL mode with synchronous=NORMAL: a killed process loses nothing that was
committed; a power cut may lose the last transactions but never corrupts the file. One
connection is shared by all threads behind a lock; writes are short, so this costs nothing next
to a judge request. Image keys are the file names (`{index}_{k}.png`), so use one store per set
of generated images.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence

from .types import Verdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image TEXT PRIMARY KEY,
    prompt_index INTEGER NOT NULL,
    testpoints INTEGER NOT NULL,
    model TEXT NOT NULL,
    raw TEXT NOT NULL,
    raw_sha256 TEXT NOT NULL,
    judged_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    image TEXT NOT NULL REFERENCES images(image),
    position INTEGER NOT NULL,
    prompt_index INTEGER NOT NULL,
    testpoint TEXT NOT NULL,
    correct INTEGER NOT NULL CHECK (correct IN (0, 1)),
    explanation TEXT NOT NULL,
    model TEXT NOT NULL,
    raw_sha256 TEXT NOT NULL,
    judged_at REAL NOT NULL,
    PRIMARY KEY (image, position)
);
"""


class StoreError(RuntimeError):
    """A judgment could not be recorded as asked (e.g. the image is already recorded)."""


class JudgmentStore:
    """Judgments of images, one transaction per image; safe to share between threads."""

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0) -> None:
        """Open (or create) the store at `path`; timeout: seconds to wait for another process's lock."""
        self.path = os.fspath(path)
        # isolation_level=None: no implicit transactions; record() issues BEGIN/COMMIT itself.
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"judgment store {self.path}: could not switch to WAL mode (got {mode!r}); is it on a network file system?"
                )
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"JudgmentStore({self.path!r})"

    def __enter__(self) -> JudgmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (committed judgments are already on disk)."""
        with self._lock:
            self._conn.close()

    def record(
        self, image: str, prompt_index: int, verdicts: Sequence[Verdict], model: str, raw: str, replace: bool = False
    ) -> None:
        """Write all test-point verdicts of one image in one transaction (all or nothing). An image
        already recorded raises StoreError unless replace=True, which swaps in the new judgment."""
        verdicts = list(verdicts)
        _check_record(image, prompt_index, verdicts, model, raw)
        now = time.time()
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
        rows = [
            (
                image,
                position,
                prompt_index,
                verdict.testpoint,
                int(verdict.correct),
                verdict.explanation,
                model,
                digest,
                now,
            )
            for position, verdict in enumerate(verdicts)
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                exists = self._conn.execute("SELECT 1 FROM images WHERE image = ?", (image,)).fetchone()
                if exists and not replace:
                    raise StoreError(
                        f"judgment store {self.path}: image {image!r} is already recorded; pass replace=True to overwrite it"
                    )
                self._conn.execute("DELETE FROM verdicts WHERE image = ?", (image,))
                self._conn.execute(
                    "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image, prompt_index, len(verdicts), model, raw, digest, now),
                )
                self._insert_verdicts(rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _insert_verdicts(self, rows: list[tuple]) -> None:
        """Insert verdict rows inside record()'s transaction (one statement per row)."""
        for row in rows:
            self._conn.execute("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def done_images(self) -> set[str]:
        """The images whose judgment is recorded."""
        with self._lock:
            return {image for (image,) in self._conn.execute("SELECT image FROM images")}

    def missing(self, images: Iterable[str]) -> list[str]:
        """The given images that have no recorded judgment, in the given order."""
        done = self.done_images()
        return [image for image in images if image not in done]

    def verdicts(self) -> list[Verdict]:
        """Every recorded verdict, ordered by image name and test point position."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT image, prompt_index, testpoint, correct, explanation FROM verdicts ORDER BY image, position"
            ).fetchall()
        return [
            Verdict(image=image, prompt_index=index, testpoint=name, correct=bool(correct), explanation=explanation)
            for image, index, name, correct, explanation in rows
        ]

    def raw_answer(self, image: str) -> str | None:
        """The judge's raw answer for an image, or None if it is not recorded."""
        with self._lock:
            row = self._conn.execute("SELECT raw FROM images WHERE image = ?", (image,)).fetchone()
        return None if row is None else row[0]

    def judgments(self) -> list[dict]:
        """One dict per recorded image: image, prompt_index, testpoints, model, raw_sha256, judged_at."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT image, prompt_index, testpoints, model, raw_sha256, judged_at FROM images ORDER BY image"
            ).fetchall()
        keys = ("image", "prompt_index", "testpoints", "model", "raw_sha256", "judged_at")
        return [dict(zip(keys, row)) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def _check_record(image: object, prompt_index: object, verdicts: list, model: object, raw: object) -> None:
    """Reject a judgment that would store inconsistent rows, naming the bad value."""
    if not isinstance(image, str) or not image:
        raise ValueError(f"record: image must be the image's file name, got {image!r}")
    if not isinstance(prompt_index, int) or isinstance(prompt_index, bool):
        raise ValueError(f"record {image!r}: prompt_index must be an int, got {prompt_index!r}")
    if not isinstance(model, str) or not isinstance(raw, str):
        raise ValueError(
            f"record {image!r}: model and raw must be strings, got {type(model).__name__} and {type(raw).__name__}"
        )
    if not verdicts:
        raise ValueError(
            f"record {image!r}: no verdicts; an image is recorded with the verdicts of all its test points"
        )
    for position, verdict in enumerate(verdicts):
        if not isinstance(verdict, Verdict):
            raise ValueError(f"record {image!r}: verdict {position} is a {type(verdict).__name__}, expected a Verdict")
        if verdict.image != image or verdict.prompt_index != prompt_index:
            raise ValueError(
                f"record {image!r} (prompt {prompt_index}): verdict {position} belongs to image {verdict.image!r}, prompt {verdict.prompt_index}"
            )
        if (
            not isinstance(verdict.correct, bool)
            or not isinstance(verdict.testpoint, str)
            or not isinstance(verdict.explanation, str)
        ):
            raise ValueError(
                f"record {image!r}: verdict {position} must have a str testpoint, bool correct and str explanation, got {verdict!r}"
            )
