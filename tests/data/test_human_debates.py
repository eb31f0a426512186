"""NYU human-debate transcripts: Questions, transcripts for SFT, and malformed lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from debate_lightning.data.human_debates import (
    debater_speeches,
    load_human_debates,
    read_human_debates,
    story_titles,
)
from debate_lightning.data.question import DataError


def debate(debate_id: str = "d1", story_id: str = "s1", title: str = "A Story", question: str = "Who won?",
           answers: tuple[str, str] = ("Ann", "Bob"), final: list[float] | None = (0.3, 0.7),
           correct: bool | None = True, **extra: object) -> dict:
    turns = [
        {"role": "Debater", "index": 0, "text": "Ann won, see <quote>Ann won</quote>.", "probabilities": None},
        {"role": "Debater", "index": 1, "text": "Bob won.", "probabilities": None},
        {"role": "Judge", "index": None, "text": "Hmm.", "probabilities": [0.5, 0.5]},
        {"role": "Debater", "index": 0, "text": "Again: Ann.", "probabilities": None},
        {"role": "Debater", "index": 1, "text": "Again: Bob.", "probabilities": None},
    ]
    if final is not None:
        turns.append({"role": "Judge", "index": None, "text": "Decided.", "probabilities": list(final)})
    record = {"storyId": story_id, "storyTitle": title, "story": f"The story of {title}. Ann won.",
              "question": question, "answers": list(answers), "debateId": debate_id, "judge": "judge-1",
              "turns": turns, "isJudgeCorrect": correct}
    record.update(extra)
    return record


def write(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "debates-readable.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_correct_answer_from_final_judge_and_is_judge_correct(tmp_path):
    path = write(tmp_path,
                 debate("d1", question="q1?", final=[0.3, 0.7], correct=True),    # judge liked Bob, was right
                 debate("d2", question="q2?", final=[0.3, 0.7], correct=False),   # judge liked Bob, was wrong
                 debate("d3", question="q3?", final=[0.9, 0.1], correct=True))
    qs = load_human_debates(path)
    assert [(q.question, q.correct_index) for q in qs] == [("q1?", 1), ("q2?", 0), ("q3?", 0)]
    q = qs[0]
    assert q.positions == ("Ann", "Bob") and q.story_title == "A Story" and q.story_id == "s1"
    assert q.source == "human_debates" and q.split in ("train", "val", "test")
    assert q.meta["debate_ids"] == ["d1"]


def test_correct_answer_field_wins(tmp_path):
    path = write(tmp_path,
                 debate("d1", question="q1?", final=[0.3, 0.7], correct=True, correctAnswer="Ann"),
                 debate("d2", question="q2?", final=None, correct=None, correctAnswer=1))
    assert [q.correct_index for q in load_human_debates(path)] == [0, 1]


def test_sessions_of_one_question_merge_and_lend_their_verdict(tmp_path):
    undecided = debate("d1", final=[0.5, 0.5], correct=False)
    swapped = debate("d2", answers=("Bob", "Ann"), final=[0.8, 0.2], correct=False)  # Bob wrong -> Ann
    path = write(tmp_path, undecided, swapped)
    (q,) = load_human_debates(path)
    assert q.positions == ("Ann", "Bob") and q.correct_index == 0  # first session's order
    assert q.meta["debate_ids"] == ["d1", "d2"] and q.meta["lines"] == [1, 2]
    assert [d.correct_index for d in read_human_debates(path)] == [None, 1]


def test_undeterminable_answer_is_an_error(tmp_path):
    path = write(tmp_path, debate("d0", question="fine?"), debate("d1", final=[0.5, 0.5], correct=True))
    with pytest.raises(DataError, match="cannot tell which answer is correct") as err:
        load_human_debates(path)
    assert (err.value.path, err.value.line, err.value.field) == (path, 2, "correctAnswer")


def test_contradicting_sessions_are_an_error(tmp_path):
    agree = debate("d1", final=[0.2, 0.8], correct=True)  # both say Bob
    path = write(tmp_path, agree, agree, debate("d2", final=[0.2, 0.8], correct=False))
    with pytest.raises(DataError, match="contradicts line 1") as err:
        load_human_debates(path)
    assert (err.value.line, err.value.field) == (3, "isJudgeCorrect")
    path = write(tmp_path, agree, debate("d2", correctAnswer="Ann"))
    with pytest.raises(DataError, match="contradicts line 1") as err:
        load_human_debates(path)
    assert (err.value.line, err.value.field) == (2, "correctAnswer")


def test_transcripts_and_debater_speeches(tmp_path):
    path = write(tmp_path, debate("d1", final=[0.3, 0.7], correct=True), "",
                 debate("d2", question="q2?", final=None, correct=None,
                        turns=[{"role": "Debater A", "text": "Mine."}, {"role": "Debater B", "text": "No, mine."}]))
    d1, d2 = read_human_debates(path)
    assert d1.line == 1 and d2.line == 3
    assert d1.final_probabilities == (0.3, 0.7) and d1.judge == "judge-1" and d1.is_judge_correct is True
    assert [t.role for t in d1.turns] == ["Debater", "Debater", "Judge", "Debater", "Debater", "Judge"]
    assert [t.index for t in d2.turns] == [0, 1]  # side read from "Debater A"/"Debater B"
    rows = debater_speeches([d1, d2])
    assert [(r["debate_id"], r["index"], r["text"]) for r in rows] == [
        ("d1", 0, "Ann won, see <quote>Ann won</quote>."), ("d1", 1, "Bob won."),
        ("d1", 0, "Again: Ann."), ("d1", 1, "Again: Bob."), ("d2", 0, "Mine."), ("d2", 1, "No, mine."),
    ]
    assert [r["is_correct_side"] for r in rows[:2]] == [False, True] and rows[4]["is_correct_side"] is None
    assert rows[1]["answer"] == "Bob" and rows[1]["role"] == "Debater" and rows[3]["speech_number"] == 3


def test_story_titles_and_splits(tmp_path):
    records = [debate(f"d{i}", story_id=f"story-{i}", title=f"Title {i % 7}", question=f"q{i}?") for i in range(60)]
    path = write(tmp_path, *records)
    assert story_titles(path) == [f"Title {i}" for i in range(7)]
    everything = load_human_debates(path)
    by_split = {s: load_human_debates(path, split=s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == len(everything) == 60
    assert len(by_split["train"]) > len(by_split["val"]) and by_split["val"] and by_split["test"]
    assert all(q.split == s for s, qs in by_split.items() for q in qs)
    both = load_human_debates(path, both_orders=True)
    assert len(both) == 120 and both[1].positions == both[0].positions[::-1]
    with pytest.raises(ValueError, match="unknown split"):
        load_human_debates(path, split="dev")


@pytest.mark.parametrize(
    "record, field, message",
    [
        ('{"storyTitle": ', None, "invalid JSON"),
        ("[]", None, "expected a JSON object"),
        (debate(answers=("a", "b", "c")), "answers", "expected two answer strings"),
        ({k: v for k, v in debate().items() if k != "storyTitle"}, "storyTitle", "missing"),
        ({k: v for k, v in debate().items() if k != "story"}, "story", "missing"),
        (debate(turns="none"), "turns", "not a list"),
        (debate(turns=[{"index": 0, "text": "x"}]), "turns[0].role", "not a string"),
        (debate(turns=[{"role": "Debater", "text": "x"}]), "turns[0].index", "needs the index"),
        (debate(turns=[{"role": "Debater", "index": 2, "text": "x"}]), "turns[0].index", "expected 0, 1"),
        (debate(turns=[{"role": "Judge", "text": "x", "probabilities": [0.2, 1.3]}]),
         "turns[0].probabilities", "two probabilities"),
        (debate(isJudgeCorrect="yes"), "isJudgeCorrect", "expected true, false or null"),
        (debate(correctAnswer="Carl"), "correctAnswer", "neither 0, 1 nor one of the two answers"),
    ],
)
def test_malformed_lines_name_file_line_field(tmp_path, record, field, message):
    path = write(tmp_path, debate(), record)
    with pytest.raises(DataError, match=message) as err:
        read_human_debates(path)
    assert (err.value.path, err.value.line, err.value.field) == (path, 2, field)
    assert f"{path} line 2" in str(err.value)
