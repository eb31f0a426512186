"""`source: jsonl`: any file in the documented Question fields, so a new dataset needs no code."""

from __future__ import annotations

import json

import pytest

from debate_lightning.data import DataError, data_main, load_questions
from debate_lightning.data.jsonl import read_question_jsonl

MINIMAL = {"story": "Ann found the key under the mat.", "question": "Who found the key?",
           "positions": ["Ann", "Bob"], "correct_index": 0}


def write(path, *records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_minimal_records_get_ids_and_a_split_that_do_not_depend_on_side_order(tmp_path):
    swapped = {**MINIMAL, "positions": ["Bob", "Ann"], "correct_index": 1}
    other = {**MINIMAL, "question": "Where was the key?", "positions": ["under the mat", "in a shoe"],
             "split": "test", "story_title": "Keys", "question_id": "k2", "meta": {"difficulty": 3}}
    path = write(tmp_path / "mine.jsonl", MINIMAL, "", swapped, other)
    q1, q1b, q2 = load_questions("jsonl", path)
    assert q1.question_id == q1b.question_id and q1.uid != q1b.uid and q1b == q1.swapped()
    assert q1.story_id == q1b.story_id and q1.split == q1b.split in ("train", "val", "test")
    assert q1.source == "jsonl" and q1.story_title == "" and q1.correct_position == "Ann"
    assert (q2.question_id, q2.split, q2.story_title, q2.meta) == ("k2", "test", "Keys", {"difficulty": 3})
    assert load_questions("jsonl", path, split="test") == [q2]
    # q1 is already in both orders: both_orders adds only q2's twin; limit counts questions
    assert [q.uid for q in load_questions("jsonl", path, both_orders=True)] == [q1.uid, q1b.uid, q2.uid, "k2:c1"]
    assert load_questions("jsonl", path, limit=1) == [q1, q1b]


def test_the_data_command_output_loads_back_unchanged(tmp_path, capsys):
    assert data_main(["--source", "synthetic", "--limit", "5", "--both-orders", "--seed", "4"]) == 0
    path = tmp_path / "questions.jsonl"
    path.write_text(capsys.readouterr().out)
    original = load_questions("synthetic", limit=5, both_orders=True, seed=4)
    loaded = load_questions("jsonl", path)
    assert loaded == original and [q.meta for q in loaded] == [q.meta for q in original]
    assert [q.source for q in loaded] == ["synthetic"] * 10  # a record's own source is kept
    assert data_main(["--source", "jsonl", "--path", str(path), "--split", "val"]) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["uid"] for x in out.out.splitlines()] == [q.uid for q in original if q.split == "val"]


@pytest.mark.parametrize("record, field, message", [
    ({k: v for k, v in MINIMAL.items() if k != "story"}, "story", "missing"),
    ({**MINIMAL, "positions": ["Ann", "Bob", "Cy"]}, "positions", "exactly 2 strings"),
    ({**MINIMAL, "positions": ["Ann", "Ann"]}, "positions", "the two positions are the same"),
    ({**MINIMAL, "correct_index": "0"}, "correct_index", "expected 0 or 1"),
    ({**MINIMAL, "correct_index": True}, "correct_index", "expected 0 or 1"),
    ({**MINIMAL, "question": 7}, "question", "expected a string, got int"),
    ({**MINIMAL, "split": "dev"}, "split", "expected one of train, val, test"),
    ({**MINIMAL, "meta": [1]}, "meta", "expected a JSON object"),
    ({**MINIMAL, "correct": 0}, "correct", "unknown field"),
    ({**MINIMAL, "question_id": "q", "uid": "q:c1"}, "uid", "does not match"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path, record, field, message):
    path = write(tmp_path / "bad.jsonl", {**MINIMAL, "question": "Fine?"}, record)
    with pytest.raises(DataError, match=rf"bad.jsonl line 2, field '{field}': .*{message}"):
        load_questions("jsonl", path)


def test_broken_json_duplicates_and_missing_files(tmp_path, capsys):
    with pytest.raises(DataError, match=r"bad.jsonl line 2: invalid JSON"):
        read_question_jsonl(write(tmp_path / "bad.jsonl", MINIMAL, "{nope"))
    with pytest.raises(DataError, match=r"dup.jsonl line 3, field 'question_id': .* already on line 1"):
        read_question_jsonl(write(tmp_path / "dup.jsonl", MINIMAL, {**MINIMAL, "question": "Other?"}, MINIMAL))
    assert data_main(["--source", "jsonl", "--path", str(tmp_path / "dup.jsonl")]) == 2
    assert "dup.jsonl line 3" in capsys.readouterr().err
    assert data_main(["--source", "jsonl"]) == 2
    assert "needs a path" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="jsonl file not found"):
        load_questions("jsonl", tmp_path / "nowhere.jsonl")
