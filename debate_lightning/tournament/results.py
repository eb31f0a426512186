"""Append-only round results: one JSON line per round, flushed and fsynced as it is written.

A kill can leave at most one incomplete last line; ``ResultsFile.repair`` cuts it off, so a
resumed run replays that round and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from debate_lightning.data.question import DataError
from debate_lightning.debate.engine import RoundResult

ROUNDS_FILE = "rounds.jsonl"


def read_results(path: str | Path, tolerate_partial_last: bool = True) -> list[RoundResult]:
    """Every round in a results file (or a directory's ``rounds.jsonl``).

    A malformed line is an error naming the file and line, except an unterminated last line,
    which is what a kill mid-write leaves, and is skipped when ``tolerate_partial_last``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ROUNDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last_unterminated = n == len(lines) and not raw.endswith(b"\n")
        try:
            d = json.loads(line)
            out.append(RoundResult.from_dict(d))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            if last_unterminated and tolerate_partial_last:
                continue
            raise DataError(path, n, None, f"not a round result: {e}") from None
    return out


class ResultsFile:
    """The results of one run directory: append rounds, know which are done, survive kills."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / ROUNDS_FILE

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def repair(self) -> int:
        """Cut an incomplete last line (a kill mid-write); return the bytes removed."""
        if not self.path.is_file():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as f:
            f.truncate(keep)
        return len(data) - keep

    def results(self) -> list[RoundResult]:
        return read_results(self.path) if self.path.is_file() else []

    def done_ids(self) -> set[str]:
        """Rounds that finished successfully. Failed rounds are retried on resume."""
        return {r.round_id for r in self.results() if r.ok}

    def append(self, result: RoundResult) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> Iterator[RoundResult]:
        """Each round id once, its last attempt winning (a retried failure replaces the failure)."""
        by_id: dict[str, RoundResult] = {}
        for r in self.results():
            by_id[r.round_id] = r
        return iter(by_id.values())
