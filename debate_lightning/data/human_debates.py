"""NYU human-debate transcripts (``debates-readable.jsonl``, Michael et al. 2023).

Each line is one judging session of a debate between two human debaters over a QuALITY story:
``storyId``, ``storyTitle``, ``story``, ``question``, two ``answers``, ``debateId``, ``judge``,
``turns`` (``role``: ``"Debater"`` with ``index`` 0/1, ``"Judge"`` or ``"Offline Judge (…)"``
with ``probabilities`` over the two answers; ``text``) and ``isJudgeCorrect``. The files do not
say which answer is correct; when a line has no ``correctAnswer`` (an index or the answer text) it
is recovered from the session's final judge probabilities: the judge's favourite is correct iff
``isJudgeCorrect`` (the source defines ``isJudgeCorrect`` as ``P(correct) > 0.5``). A debate judged
in several sessions gives one Question; a session that cannot tell (final 0.5/0.5) borrows the
answer from another session of the same question, and if none can tell, that is an error.

Two views of the file: :func:`load_human_debates` gives Questions to debate again (split 80/10/10
by a hash of the story, like every other source), and :func:`read_human_debates` /
:func:`debater_speeches` give the transcripts themselves, for SFT on human speeches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debate_lightning.data.question import (
    SPLITS,
    DataError,
    Question,
    hash_split,
    iter_jsonl,
    stable_id,
    with_both_orders,
)

SOURCE = "human_debates"
SPLIT_WEIGHTS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class DebateTurn:
    """One turn: a debater's speech (``index`` = which answer they argue) or a judge's verdict."""

    role: str
    index: int | None
    text: str
    probabilities: tuple[float, float] | None = None

    @property
    def is_debater(self) -> bool:
        return self.role.startswith("Debater")

    @property
    def is_judge(self) -> bool:
        return "Judge" in self.role


@dataclass(frozen=True)
class HumanDebate:
    """One judging session of a human debate, as recorded."""

    debate_id: str
    story_id: str
    story_title: str
    story: str
    question: str
    answers: tuple[str, str]
    turns: tuple[DebateTurn, ...]
    judge: str | None
    is_judge_correct: bool | None
    correct_index: int | None  # None: this session alone cannot tell
    path: str = ""
    line: int = 0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def question_id(self) -> str:
        """The same for every session and for both answer orders of the question."""
        return stable_id(SOURCE, self.story_id, self.question, *sorted(self.answers))

    @property
    def final_probabilities(self) -> tuple[float, float] | None:
        judged = [t.probabilities for t in self.turns if t.probabilities is not None]
        return judged[-1] if judged else None


def _str(record: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = _optional_str(record, key, path, line)
    if value is None:
        raise DataError(path, line, key, "missing")
    return value


def _optional_str(record: dict[str, Any], key: str, path: Path, line: int) -> str | None:
    value = record.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    return None if value is None else str(value)


def _turn(raw: Any, path: Path, line: int, k: int) -> DebateTurn:
    where = f"turns[{k}]"
    if not isinstance(raw, dict):
        raise DataError(path, line, where, f"expected an object, got {type(raw).__name__}")
    role, text = raw.get("role"), raw.get("text")
    if not isinstance(role, str):
        raise DataError(path, line, f"{where}.role", "missing or not a string")
    if not isinstance(text, str):
        raise DataError(path, line, f"{where}.text", "missing or not a string")
    index = raw.get("index")
    if index is None and (m := re.fullmatch(r"Debater ([AB])", role)):
        index = "AB".index(m.group(1))  # older exports name the side in the role
    if index is not None and (isinstance(index, bool) or index not in (0, 1)):
        raise DataError(path, line, f"{where}.index", f"expected 0, 1 or null, got {index!r}")
    if role.startswith("Debater") and index is None:
        raise DataError(path, line, f"{where}.index", "a debater turn needs the index of the answer it argues")
    probs = raw.get("probabilities")
    if probs is not None:
        if (not isinstance(probs, list) or len(probs) != 2
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1 for p in probs)):
            raise DataError(path, line, f"{where}.probabilities",
                            f"expected two probabilities in [0, 1], got {probs!r:.60}")
        probs = (float(probs[0]), float(probs[1]))
    return DebateTurn(role=role, index=index, text=text, probabilities=probs)


def _correct_index(record: dict[str, Any], answers: tuple[str, str], turns: tuple[DebateTurn, ...],
                   path: Path, line: int) -> int | None:
    given = record.get("correctAnswer")
    if given is not None:
        if isinstance(given, int) and not isinstance(given, bool) and given in (0, 1):
            return given
        if isinstance(given, str) and given.strip() in (a.strip() for a in answers):
            return [a.strip() for a in answers].index(given.strip())
        raise DataError(path, line, "correctAnswer", f"{given!r:.60} is neither 0, 1 nor one of the two answers")
    correct = record.get("isJudgeCorrect")
    final = [t.probabilities for t in turns if t.probabilities is not None]
    if correct is None or not final or final[-1][0] == final[-1][1]:
        return None
    favourite = 0 if final[-1][0] > final[-1][1] else 1
    return favourite if correct else 1 - favourite


def parse_debate(record: Any, path: Path, line: int) -> HumanDebate:
    """One JSON object as a HumanDebate, or a DataError naming the field at fault."""
    if not isinstance(record, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(record).__name__}")
    answers = record.get("answers")
    if not isinstance(answers, list) or len(answers) != 2 or not all(isinstance(a, str) for a in answers):
        raise DataError(path, line, "answers", f"expected two answer strings, got {answers!r:.80}")
    turns_raw = record.get("turns")
    if not isinstance(turns_raw, list):
        raise DataError(path, line, "turns", "missing or not a list")
    turns = tuple(_turn(t, path, line, k) for k, t in enumerate(turns_raw))
    pair = (answers[0], answers[1])
    title = _str(record, "storyTitle", path, line)
    is_judge_correct = record.get("isJudgeCorrect")
    if is_judge_correct is not None and not isinstance(is_judge_correct, bool):
        raise DataError(path, line, "isJudgeCorrect", f"expected true, false or null, got {is_judge_correct!r:.40}")
    return HumanDebate(
        debate_id=_str(record, "debateId", path, line),
        story_id=_optional_str(record, "storyId", path, line) or stable_id(title),
        story_title=title, story=_str(record, "story", path, line),
        question=_str(record, "question", path, line), answers=pair, turns=turns,
        judge=_optional_str(record, "judge", path, line), is_judge_correct=is_judge_correct,
        correct_index=_correct_index(record, pair, turns, path, line), path=str(path), line=line,
        meta={"correct_from": "correctAnswer" if record.get("correctAnswer") is not None else "isJudgeCorrect"},
    )


def read_human_debates(path: str | Path) -> list[HumanDebate]:
    """Every session in the file, in file order; blank lines are skipped."""
    path = Path(path)
    return [parse_debate(record, path, line) for line, record in iter_jsonl(path)]


def story_titles(path: str | Path) -> list[str]:
    """The distinct story titles in a transcript file, in first-seen order (for deduplication)."""
    return list(dict.fromkeys(d.story_title for d in read_human_debates(path)))


def debater_speeches(debates: Iterable[HumanDebate]) -> list[dict[str, Any]]:
    """Every debater speech with its context, one dict each, for building SFT rows.

    ``answer`` is the answer the speaker argued for; ``is_correct_side`` is None when the correct
    answer is unknown for that session.
    """
    rows = []
    for d in debates:
        for k, t in enumerate(t for t in d.turns if t.is_debater):
            assert t.index is not None
            rows.append({
                "debate_id": d.debate_id, "story_id": d.story_id, "story_title": d.story_title,
                "question": d.question, "answers": list(d.answers), "role": t.role, "index": t.index,
                "speech_number": k, "text": t.text, "answer": d.answers[t.index],
                "is_correct_side": None if d.correct_index is None else t.index == d.correct_index,
            })
    return rows


def load_human_debates(path: str | Path, split: str | None = None, both_orders: bool = False) -> list[Question]:
    """One Question per distinct debated question, in the answer order of its first session."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    groups: dict[str, list[HumanDebate]] = {}
    for d in read_human_debates(path):
        groups.setdefault(d.question_id, []).append(d)
    questions = []
    for qid, sessions in groups.items():
        first = sessions[0]
        known = {}
        for s in sessions:  # bring every session's verdict into the first session's answer order
            if s.correct_index is not None:
                known[s.line] = s.answers[s.correct_index]
        if not known:
            raise DataError(Path(first.path), first.line, "correctAnswer", (
                "cannot tell which answer is correct: no correctAnswer, and isJudgeCorrect is missing or "
                "the final judge probabilities are missing or 0.5/0.5 in every session of this question"))
        first_line, answer = next(iter(known.items()))
        for s in sessions:
            if s.line in known and known[s.line] != answer:
                raise DataError(Path(s.path), s.line, s.meta["correct_from"],
                                f"contradicts line {first_line} about which answer is correct")
        story_split = hash_split(first.story_id, SPLIT_WEIGHTS)
        if split is not None and story_split != split:
            continue
        questions.append(Question(
            story=first.story, story_title=first.story_title, question=first.question,
            positions=first.answers, correct_index=first.answers.index(answer),
            question_id=qid, story_id=first.story_id, split=story_split, source=SOURCE,
            meta={"debate_ids": list(dict.fromkeys(s.debate_id for s in sessions)),
                  "lines": [s.line for s in sessions], "judges": [s.judge for s in sessions]},
        ))
    return with_both_orders(questions) if both_orders else questions
