"""Open debate: each debater first says which answer it will defend, then argues for it.

The format (``Format(kind="open_debate")``) plays a step 0 in which both debaters state their
choice at the same time, blind to each other ("I defend answer A"), and then the speeches of a
debate. The choice statement is the side's step-0 speech of the round record; ``chosen_sides``
reads it back, so the record holds the choice verbatim and nothing is stored twice.

Both debaters may choose the same answer. The round is then still played, each arguing for its
own choice: the choice is the measurement (does a debater "know" the answer, judged by the side
it picks, as in the original research code), and forcing the second debater onto the other answer
would replace its choice with an assignment. ``choice_stats`` counts how often both agreed.

A debater's seat (side 0 or 1, "Debater A" or "Debater B") does not fix its answer: side 1 may
defend answer A. The judge reads the choice statements with the speeches.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.transcript import Speech

CHOICE_STEP = 0
_NAMED = re.compile(r"\b(?i:answer)\s*[(\"'*]?\s*([AB])\b")
_LEADING = re.compile(r"^\W*([AB])(?:[.:,;!)]|\s*$)")


def parse_choice(text: str) -> int | None:
    """The answer index (0 = A, 1 = B) a choice statement names, or None if it names none.

    The first "answer A"/"answer (B)" wins (only the letter must be a capital); else a statement
    that starts with the bare letter and a stop ("B.", "(A)", "A"). Any other capital A, as in
    "A man ...", is not read as a choice.
    """
    found = _NAMED.search(text)
    if found:
        return "AB".index(found.group(1))
    found = _LEADING.match(text)
    return "AB".index(found.group(1)) if found else None


def chosen_sides(speeches: Sequence[Speech | Mapping[str, Any]]) -> list[int | None]:
    """Per side (0, 1): the answer its choice statement named; None where it named none or failed."""
    out: list[int | None] = [None, None]
    for s in speeches:
        d = s.to_dict() if isinstance(s, Speech) else s
        if d["step"] == CHOICE_STEP and not d.get("error") and d["side"] in (0, 1):
            out[d["side"]] = parse_choice(d["text"])
    return out


def choice_stats(results: Iterable[RoundResult]) -> dict[str, Any] | None:
    """How often open-debate debaters chose the correct answer; None without open-debate rounds.

    Counts finished (``ok``) rounds. One statement per debater seat and round; ``share`` is the
    share of statements that chose the correct answer (a statement naming no answer counts as not
    correct; ``share_of_choices`` leaves those out). ``by_debater`` groups by debater name,
    ``both_same`` counts rounds where both named the same answer.
    """
    rounds = [r for r in results if r.ok and r.format.get("kind") == "open_debate"]
    if not rounds:
        return None
    overall = [0, 0, 0]  # statements, correct, no choice
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    both_same = both_correct = 0
    for r in rounds:
        sides = chosen_sides(r.speeches)
        for side, choice in enumerate(sides):
            for t in (overall, tally[r.debaters[side]]):
                t[0] += 1
                t[1] += choice == r.correct_index
                t[2] += choice is None
        if None not in sides and sides[0] == sides[1]:
            both_same += 1
            both_correct += sides[0] == r.correct_index

    def row(t: list[int]) -> dict[str, Any]:
        made = t[0] - t[2]
        return {"statements": t[0], "correct": t[1], "no_choice": t[2], "share": t[1] / t[0],
                "share_of_choices": t[1] / made if made else None}

    return {
        "rounds": len(rounds),
        **row(overall),
        "both_same": both_same,
        "both_same_correct": both_correct,
        "by_debater": {name: row(t) for name, t in sorted(tally.items())},
    }
