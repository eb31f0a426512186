"""The source dispatcher and the `data` command that prints what a config would debate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from debate_lightning.data import Question, data_main, load_questions
from debate_lightning.data.synthetic import generate

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).parent / "fixtures" / "quality_v1.0.1_sample.jsonl"
REQUIRED_KEYS = {"story_title", "story", "question", "positions", "correct_index", "split", "uid"}


def test_synthetic_limit_split_and_options():
    qs = load_questions("synthetic", split="test", limit=10, seed=3)
    assert len(qs) == 10 and {q.split for q in qs} == {"test"}
    assert qs == generate(3, seed=3, split="test")[:10]  # ceil(10 / 4 questions per story) stories
    assert len(load_questions("synthetic")) == 25 * 4
    assert len(load_questions("synthetic", num_stories=2, questions_per_story=3)) == 6
    both = load_questions("synthetic", limit=5, both_orders=True)
    assert len(both) == 10  # limit counts questions, both orders doubles them
    assert all(a.swapped() == b for a, b in zip(both[::2], both[1::2]))


def test_quality_and_human_debates_through_the_dispatcher(tmp_path):
    assert len(load_questions("quality", SAMPLE)) == 4
    assert len(load_questions("quality", SAMPLE, difficult_only=False, limit=3)) == 3
    assert len(load_questions("quality", str(SAMPLE), difficult_only=False, both_orders=True)) == 10
    assert load_questions("quality", SAMPLE, split="train") == []
    debates = tmp_path / "debates-readable.jsonl"
    debates.write_text(json.dumps({
        "storyId": "s", "storyTitle": "The Girl in His Mind", "story": "text", "question": "Who?",
        "answers": ["Ann", "Bob"], "debateId": "d", "turns": [], "isJudgeCorrect": None, "correctAnswer": "Bob",
    }) + "\n")
    (q,) = load_questions("human_debates", debates)
    assert q.correct_position == "Bob"
    assert load_questions("quality", SAMPLE, exclude_titles=debates) == []


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(source="squad"), ValueError, "unknown source"),
        (dict(source="synthetic", split="dev"), ValueError, "unknown split"),
        (dict(source="synthetic", limit=-1), ValueError, "limit"),
        (dict(source="synthetic", path="x.jsonl"), ValueError, "takes no path"),
        (dict(source="synthetic", difficult_only=False), ValueError, "does not take option.*difficult_only"),
        (dict(source="human_debates", path=SAMPLE, num_stories=3), ValueError, "accepts: none"),
        (dict(source="quality"), ValueError, "needs a path"),
        (dict(source="quality", path="/nonexistent/quality.jsonl"), FileNotFoundError, "not found"),
    ],
)
def test_bad_requests(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_questions(**kwargs)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_data_main_prints_every_question_and_order(capsys):
    assert data_main(["--source", "synthetic", "--limit", "3", "--seed", "2", "--both-orders", "--split", "val"]) == 0
    out = capsys.readouterr()
    rows = _lines(out.out)
    assert len(rows) == 6 and all(REQUIRED_KEYS <= set(r) for r in rows)
    expected = load_questions("synthetic", split="val", limit=3, seed=2, both_orders=True)
    assert [Question.from_dict(r) for r in rows] == expected
    assert "6 records" in out.err


def test_data_main_quality(capsys):
    assert data_main(["--source", "quality", "--path", str(SAMPLE), "--all-difficulties"]) == 0
    rows = _lines(capsys.readouterr().out)
    assert len(rows) == 5 and rows[0]["story_title"] == "The Girl in His Mind"
    assert rows[3]["positions"][rows[3]["correct_index"]] == "a criminal that Blake is hunting"


def test_data_main_user_errors(capsys, tmp_path):
    assert data_main(["--source", "quality"]) == 2
    assert "needs a path" in capsys.readouterr().err
    assert data_main(["--source", "human_debates"]) == 2
    assert "--path FILE" in capsys.readouterr().err
    assert data_main(["--source", "synthetic", "--all-difficulties"]) == 2
    assert "--all-difficulties does not apply" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(SAMPLE.read_text() + "{broken\n")
    assert data_main(["--source", "quality", "--path", str(bad)]) == 2
    err = capsys.readouterr()
    assert f"{bad} line 2" in err.err and "invalid JSON" in err.err and err.out == ""


def test_module_runs_as_a_script():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "debate_lightning.data.loading",
           "--source", "quality", "--path", str(SAMPLE), "--both-orders", "--seed", "1"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
    rows = _lines(done.stdout)
    assert [Question.from_dict(r) for r in rows] == load_questions("quality", SAMPLE, seed=1, both_orders=True)
