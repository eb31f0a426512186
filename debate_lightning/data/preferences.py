"""Preference pairs: the JSONL that tournaments write and DPO training reads.

One line per pair: the chat ``prompt`` a debater saw, the ``chosen`` and ``rejected`` speeches,
the judge's probabilities for each (``chosen_p``/``rejected_p``, when known) and ``preference``,
the probability that chosen beats rejected (1.0 for a hard label; soft labels for soft-DPO). The
file is plain JSON lines so runs can be appended to, sharded, merged and read by other tools.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debate_lightning.data.question import DataError, iter_jsonl

FIELDS = ("prompt", "chosen", "rejected", "chosen_p", "rejected_p", "preference", "meta")


@dataclass(frozen=True)
class PreferencePair:
    """Two continuations of one prompt, and how strongly the first is preferred."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_p: float | None = None
    rejected_p: float | None = None
    preference: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problem = _problem(dataclasses.asdict(self))
        if problem is not None:
            raise ValueError(f"field {problem[0]!r}: {problem[1]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferencePair:
        return cls(**{k: d[k] for k in FIELDS if k in d})


def _is_probability(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0.0 <= x <= 1.0


def _problem(d: dict[str, Any]) -> tuple[str, str] | None:
    """The first (field, message) that makes ``d`` an invalid pair, or None."""
    prompt = d.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return "prompt", "expected a non-empty list of chat messages"
    for i, m in enumerate(prompt):
        if not isinstance(m, dict):
            return f"prompt[{i}]", f"expected a {{role, content}} object, got {type(m).__name__}"
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                return f"prompt[{i}].{key}", "missing or not a string"
    for key in ("chosen", "rejected"):
        if not isinstance(d.get(key), str):
            return key, "missing or not a string"
    for key in ("chosen_p", "rejected_p"):
        if d.get(key) is not None and not _is_probability(d[key]):
            return key, f"expected a probability in [0, 1] or null, got {d[key]!r:.40}"
    if not _is_probability(d.get("preference")):
        return "preference", f"expected a probability in [0, 1], got {d.get('preference')!r:.40}"
    if not isinstance(d.get("meta", {}), dict):
        return "meta", "expected an object"
    return None


def read_preferences(path: str | Path) -> list[PreferencePair]:
    """Every pair in a JSONL file; a bad line is a DataError naming file, line and field."""
    path = Path(path)
    pairs = []
    for line, d in iter_jsonl(path):
        if "preference" not in d:
            raise DataError(path, line, "preference", "missing")
        problem = _problem(d)
        if problem is not None:
            raise DataError(path, line, *problem)
        pairs.append(PreferencePair.from_dict(d))
    return pairs


def write_preferences(path: str | Path, pairs: Iterable[PreferencePair], append: bool = False) -> int:
    """Write (or append) pairs as JSON lines; returns how many were written.

    Each line is flushed as written, so an interrupted run keeps every pair it finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    return n
