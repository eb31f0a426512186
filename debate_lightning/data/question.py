"""The one record type every loader produces: a two-position reading-comprehension question."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A bad input record, naming the file, the line and the field.

    >>> str(DataError("data/x.jsonl", 17, "questions[3].options", "has 3 options, expected 4"))
    "data/x.jsonl line 17, field 'questions[3].options': has 3 options, expected 4"
    """

    def __init__(self, path: str | Path | None, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = [str(path) if path is not None else "<input>"]
        if line is not None:
            where.append(f"line {line}")
        text = " ".join(where)
        if field:
            text += f", field {field!r}"
        super().__init__(f"{text}: {message}")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file.

    Invalid JSON or a line that is not a JSON object is a ``DataError`` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, line, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(path, line, None, f"expected a JSON object, got {type(record).__name__}")
            yield line, record


def stable_id(*parts: object, length: int = 12) -> str:
    """A short, deterministic id from its parts (sha1 of their joined text)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Question:
    """A question with exactly two positions to argue for, one of them correct.

    ``question_id`` identifies the question whatever the order of its positions;
    ``uid`` identifies this side order (``question_id`` plus which index is correct).
    """

    story: str
    story_title: str
    question: str
    positions: tuple[str, str]
    correct_index: int
    question_id: str
    story_id: str
    split: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.positions) != 2:
            raise ValueError(f"question {self.question_id}: expected 2 positions, got {len(self.positions)}")
        if self.correct_index not in (0, 1):
            raise ValueError(f"question {self.question_id}: correct_index must be 0 or 1, got {self.correct_index}")
        object.__setattr__(self, "positions", tuple(self.positions))

    @property
    def uid(self) -> str:
        return f"{self.question_id}:{'c0' if self.correct_index == 0 else 'c1'}"

    @property
    def correct_position(self) -> str:
        return self.positions[self.correct_index]

    def swapped(self) -> Question:
        """The same question with its two positions in the other order."""
        return dataclasses.replace(
            self, positions=(self.positions[1], self.positions[0]), correct_index=1 - self.correct_index
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["positions"] = list(self.positions)
        d["uid"] = self.uid
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def with_both_orders(questions: list[Question]) -> list[Question]:
    """Each question followed by its swapped twin, so both side orders are debated.

    A twin already in the list (a replayed run or a question file that holds both orders) stays
    where it is and is not added again: every side order is debated once, and a list that is
    already in both orders comes back unchanged.
    """
    present = {q.uid for q in questions}
    out: list[Question] = []
    for q in questions:
        out.append(q)
        twin = q.swapped()
        if twin.uid not in present:
            present.add(twin.uid)
            out.append(twin)
    return out


def first_questions(questions: list[Question], limit: int | None) -> list[Question]:
    """The records of the first ``limit`` distinct questions (by ``question_id``), in order.

    Counting questions, not records, lets ``limit`` mean the same for a source whose records hold
    one side order each and for one that holds both (a replayed run)."""
    if limit is None:
        return list(questions)
    kept: set[str] = set()
    out = []
    for q in questions:
        if q.question_id not in kept:
            if len(kept) >= limit:
                continue
            kept.add(q.question_id)
        out.append(q)
    return out


def hash_split(key: object, weights: dict[str, float]) -> str:
    """A deterministic split for ``key`` (e.g. a story id), drawn by its sha1, not Python's hash().

    Splitting by story rather than by question keeps every question about one story in one split,
    so a model never trains on a story it is evaluated on. ``weights`` maps split names to
    fractions that sum to 1 (e.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``).
    """
    u = int(hashlib.sha1(f"split\x1f{key}".encode()).hexdigest()[:15], 16) / 16**15
    if not weights:
        raise ValueError("hash_split needs at least one split")
    total = 0.0
    for name, weight in weights.items():
        total += weight
        if u < total:
            return name
    return list(weights)[-1]  # only reached through rounding when the weights sum to 1
