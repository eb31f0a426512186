"""Turn a config's questions, debaters and formats into the list of rounds to play."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from debate_lightning.data.question import Question
from debate_lightning.debate.engine import RoundSpec
from debate_lightning.debate.formats import Format
from debate_lightning.tournament.config import ScheduleConfig


def matchups(kind: str, names: Sequence[str], custom: Sequence[Sequence[str]] = ()) -> list[tuple[str, str]]:
    """(side A, side B) debater pairs. Round robins include both sides of every pair."""
    if kind == "self_play":
        return [(n, n) for n in names]
    if kind in ("round_robin", "capped_round_robin"):
        if len(names) < 2:
            raise ValueError(f"schedule.kind {kind} needs at least 2 debaters, got {list(names)}")
        return [(a, b) for a, b in itertools.permutations(names, 2)]
    if kind == "custom":
        return [(m[0], m[1]) for m in custom]
    raise ValueError(f"unknown schedule.kind {kind!r}")


def first_questions(questions: Sequence[Question], cap: int) -> list[Question]:
    """The entries of the first ``cap`` distinct questions (both side orders of each)."""
    keep: list[str] = []
    for q in questions:
        if q.question_id not in keep and len(keep) < cap:
            keep.append(q.question_id)
    return [q for q in questions if q.question_id in keep]


def schedule(
    questions: Sequence[Question], names: Sequence[str], formats: Sequence[Format], config: ScheduleConfig
) -> list[RoundSpec]:
    """Every round of the tournament, in a deterministic order.

    Single-advocate formats (consultancy) put the advocate on its ``consultant_side``; the other
    side's name is empty. For a capped round robin each pair gets the first ``cap`` questions,
    each in every side order the data has (so ``cap`` counts questions, not rounds).
    """
    pairs = matchups(config.kind, names, config.matchups)
    specs: list[RoundSpec] = []
    for pair in pairs:
        pair_questions = questions
        if config.kind == "capped_round_robin" and config.cap is not None:
            pair_questions = first_questions(questions, config.cap)
        for fmt in formats:
            for q in pair_questions:
                debaters = tuple(pair[side] if side in fmt.sides else "" for side in (0, 1))
                for r in range(config.repeats):
                    specs.append(RoundSpec(q, fmt, debaters, repeat=r))  # type: ignore[arg-type]
    # Duplicates arise in self-play consultancy (both sides named the same): keep one of each id.
    seen: set[str] = set()
    unique = []
    for s in specs:
        if s.round_id not in seen:
            seen.add(s.round_id)
            unique.append(s)
    return unique
