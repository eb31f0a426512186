"""Runs built on runs: the questions an earlier tournament debated, read from its ``rounds.jsonl``.

``source: run`` replays them (the original research code's ``replicate_topics``) and
``exclude_runs`` keeps them out of a new run. Only the ``question`` of each round line is read,
so this room needs nothing from the tournament room; a kill mid-write leaves an unterminated
last line, which is skipped as the tournament's own reader skips it.
"""

from __future__ import annotations

import json
from pathlib import Path

from debate_lightning.data.jsonl import parse_question
from debate_lightning.data.question import DataError, Question

ROUNDS_FILE = "rounds.jsonl"  # the name tournament/results.py writes


def rounds_file(path: str | Path) -> Path:
    """The results file of a run: ``DIR/rounds.jsonl``, or the file itself when given one."""
    p = Path(path)
    if p.is_dir():
        p = p / ROUNDS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"run directory {path} has no {ROUNDS_FILE} (is it a tournament --output directory?)")
    elif not p.is_file():
        raise FileNotFoundError(f"run not found: {path} (expected a tournament --output directory)")
    return p


def run_questions(path: str | Path) -> list[Question]:
    """Each question and side order an earlier run debated, once, in the order it first appears.

    Every round counts, failed ones too: the run scheduled that question. A round debated again
    (other debaters, formats or repeats) adds nothing; the two side orders of one question are two
    entries, each at its first appearance.
    """
    path = rounds_file(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    seen: set[str] = set()
    out: list[Question] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if n == len(lines) and not raw.endswith(b"\n"):
                continue  # a kill mid-write: the tournament resumes this round, we skip it
            raise DataError(path, n, None, f"not a round result: {e}") from None
        if not isinstance(record, dict):
            raise DataError(path, n, None, f"expected a JSON object, got {type(record).__name__}")
        if not isinstance(record.get("question"), dict):
            raise DataError(path, n, "question", "missing or not an object (is this a tournament's rounds.jsonl?)")
        q = parse_question(record["question"], path, n, prefix="question.")
        if q.uid not in seen:
            seen.add(q.uid)
            out.append(q)
    return out


def used_question_ids(paths: list[str] | tuple[str, ...]) -> set[str]:
    """The ``question_id`` of every question the runs at ``paths`` debated, in either side order."""
    return {q.question_id for p in paths for q in run_questions(p)}
