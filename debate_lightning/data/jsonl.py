"""Generic question JSONL: any file in the documented ``Question`` fields, so a new dataset needs no code.

One JSON object per line. Required fields: ``story`` (the text the debaters read),
``question``, ``positions`` (exactly two strings, the answers argued for) and ``correct_index``
(0 or 1, which position is right). Optional: ``story_title`` (default ""), ``question_id``
(default: a digest of story, question and the two positions in either order, so both side orders
of one question share it), ``story_id`` (default: a digest of title and story), ``split``
(``train``/``val``/``test``; default: drawn from the story id, 80/10/10, so one story never spans
two splits), ``source`` (default ``jsonl``), ``meta`` (a JSON object carried along) and ``uid``
(checked against ``question_id`` and ``correct_index`` when given). The output of
``python -m debate_lightning data`` and the ``question`` of every line of a tournament's
``rounds.jsonl`` are in this format, so both load back unchanged.

Any other field, a missing one, a wrong type, or the same question twice in one side order is a
``DataError`` naming the file, the line and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from debate_lightning.data.question import SPLITS, DataError, Question, hash_split, iter_jsonl, stable_id

SOURCE = "jsonl"
REQUIRED = ("story", "question", "positions", "correct_index")
OPTIONAL = ("story_title", "question_id", "story_id", "split", "source", "meta", "uid")
SPLIT_WEIGHTS = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_question(record: dict[str, Any], path: str | Path | None, line: int | None, prefix: str = "") -> Question:
    """A ``Question`` from one record in the documented fields; ``prefix`` names where the record
    sits in its line (``question.`` inside a round result)."""

    def fail(name: str | None, message: str) -> DataError:
        return DataError(path, line, f"{prefix}{name}" if name else prefix.rstrip(".") or None, message)

    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(unknown[0], f"unknown field; a question takes {', '.join(REQUIRED + OPTIONAL)}")
    for name in REQUIRED:
        if name not in record:
            raise fail(name, "missing (required: " + ", ".join(REQUIRED) + ")")
    for name in ("story", "question", "story_title", "question_id", "story_id", "source", "uid"):
        if name in record and not isinstance(record[name], str):
            raise fail(name, f"expected a string, got {type(record[name]).__name__}")
    for name in ("story", "question"):
        if not record[name].strip():
            raise fail(name, "is empty")
    positions = record["positions"]
    if not isinstance(positions, list) or len(positions) != 2 or not all(isinstance(p, str) for p in positions):
        raise fail("positions", f"expected a list of exactly 2 strings, got {positions!r:.80}")
    if positions[0] == positions[1]:
        raise fail("positions", f"the two positions are the same ({positions[0]!r:.60})")
    correct = record["correct_index"]
    if isinstance(correct, bool) or correct not in (0, 1):
        raise fail("correct_index", f"expected 0 or 1, got {correct!r}")
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise fail("meta", f"expected a JSON object, got {type(meta).__name__}")
    title = record.get("story_title", "")
    story_id = record.get("story_id") or stable_id(SOURCE, title, record["story"])
    split = record.get("split")
    if split is None:
        split = hash_split(story_id, SPLIT_WEIGHTS)
    elif split not in SPLITS:
        raise fail("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    question_id = record.get("question_id") or stable_id(SOURCE, story_id, record["question"], *sorted(positions))
    q = Question(
        story=record["story"], story_title=title, question=record["question"], positions=tuple(positions),
        correct_index=correct, question_id=question_id, story_id=story_id, split=split,
        source=record.get("source") or SOURCE, meta=meta,
    )
    if "uid" in record and record["uid"] != q.uid:
        raise fail("uid", f"{record['uid']!r} does not match question_id and correct_index (expected {q.uid!r})")
    return q


def read_question_jsonl(path: str | Path, split: str | None = None) -> list[Question]:
    """Every question of a generic question JSONL file, in file order; with ``split``, that split.

    The same question in the same side order twice is an error naming both lines; the two side
    orders of one question (the same ``question_id``) may both appear.
    """
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        q = parse_question(record, path, line)
        if q.uid in seen:
            raise DataError(path, line, "question_id",
                            f"question {q.question_id!r} in this side order is already on line {seen[q.uid]}")
        seen[q.uid] = line
        if split is None or q.split == split:
            questions.append(q)
    return questions
