"""Runs built on runs: `source: run` replays an earlier tournament's questions and side orders,
`exclude_runs` keeps them out of a new one; both read the real rounds.jsonl a tournament writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from debate_lightning.data import DataConfig, DataError, data_main, load_questions
from debate_lightning.data.question import with_both_orders


def play(root: Path, data: dict, name: str = "out") -> Path:
    """A round-robin tournament of two random debaters (each question debated in several rounds)."""
    from debate_lightning.tournament.cli import tournament_main

    cfg = {
        "data": data,
        "models": {"r": {"backend": "random"}},
        "debaters": [{"name": "a", "model": "r"}, {"name": "b", "model": "r"}],
        "judge": {"model": "r"},
        "formats": [{"kind": "debate", "num_speeches": 1}],
        "schedule": {"kind": "round_robin"},
        "rounds_in_flight": 4,
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = root / name
    assert tournament_main(["--config", str(root / f"{name}.yaml"), "--output", str(out), "--progress", "false",
                            "--report", "false"]) == 0
    return out


def uids_in_order(run: Path) -> list[str]:
    """Each question uid of a rounds.jsonl once, at its first appearance."""
    seen: list[str] = []
    for line in (run / "rounds.jsonl").read_text().splitlines():
        uid = json.loads(line)["question"]["uid"]
        if uid not in seen:
            seen.append(uid)
    return seen


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Three synthetic val questions in both orders, each played by (a, b) and (b, a)."""
    return play(tmp_path_factory.mktemp("earlier"), {"source": "synthetic", "limit": 3, "both_orders": True})


def test_a_run_replays_its_questions_and_side_orders(run_dir, tmp_path):
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    order = uids_in_order(run_dir)
    assert len(lines) > len(order) == 6  # every side order was debated more than once
    for both in (True, False):  # already in both orders: nothing is doubled again, nothing dropped
        assert [q.uid for q in load_questions("run", path=run_dir, both_orders=both)] == order
    replayed = load_questions("run", path=run_dir / "rounds.jsonl")  # the file itself works too
    originals = {q.uid: q for q in load_questions("synthetic", limit=3, split="val", both_orders=True)}
    assert replayed == [originals[u] for u in order]  # whole records: story, positions, meta
    assert [q.meta for q in replayed] == [originals[u].meta for u in order]
    # limit counts questions, as for every source: 2 questions = their 4 side orders
    assert [q.uid for q in load_questions("run", path=run_dir, limit=2)] == order[:4]

    # a new tournament from `data: {source: run, path: DIR}` debates exactly those
    again = play(tmp_path, {"source": "run", "path": str(run_dir), "limit": None})
    assert uids_in_order(again) == order


def test_a_run_in_one_side_order_gains_only_the_missing_twins(tmp_path):
    one = play(tmp_path, {"source": "synthetic", "limit": 3, "both_orders": False})
    order = uids_in_order(one)
    assert len(order) == 3
    assert [q.uid for q in load_questions("run", path=one)] == order
    both = load_questions("run", path=one, both_orders=True)
    assert [q.uid for q in both] == [u for uid in order for u in (uid, uid[:-1] + ("1" if uid.endswith("0") else "0"))]
    assert with_both_orders(both) == both  # doubling is idempotent


def test_split_and_broken_runs_are_named(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"has no questions of split 'train' \(it has val\)"):
        load_questions("run", path=run_dir, split="train")
    assert len(load_questions("run", path=run_dir, split="val")) == 6
    with pytest.raises(FileNotFoundError, match="has no rounds.jsonl"):
        load_questions("run", path=tmp_path)
    with pytest.raises(ValueError, match="needs the directory of an earlier tournament run"):
        load_questions("run")

    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rounds.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # killed mid-write
    assert len(load_questions("run", path=broken)) == len({json.loads(x)["question"]["uid"] for x in lines[:2]})
    (broken / "rounds.jsonl").write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(DataError, match=r"broken/rounds.jsonl line 2: not a round result"):
        load_questions("run", path=broken)
    bad = json.loads(lines[0])
    bad["question"]["correct_index"] = 2
    (broken / "rounds.jsonl").write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"line 2, field 'question.correct_index': expected 0 or 1, got 2"):
        load_questions("run", path=broken)
    del bad["question"]
    (broken / "rounds.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"line 1, field 'question': missing or not an object"):
        load_questions("run", path=broken)


def test_exclude_runs_drops_every_question_an_earlier_run_used(run_dir, tmp_path):
    used = {q.question_id for q in load_questions("run", path=run_dir)}
    fresh = DataConfig(source="synthetic", limit=3, both_orders=True, exclude_runs=[str(run_dir)]).load()
    assert len(fresh) == 6 and not {q.question_id for q in fresh} & used  # limit counts after exclusion
    everything = load_questions("synthetic", split="val", limit=6)
    assert [q.question_id for q in fresh[::2]] == [q.question_id for q in everything if q.question_id not in used][:3]
    # the run's own questions, excluded from a replay of itself, leave nothing: an error, not an empty job
    with pytest.raises(ValueError, match=r"every run question \(6 records\) was debated in exclude_runs"):
        load_questions("run", path=run_dir, exclude_runs=[str(run_dir)])
    with pytest.raises(FileNotFoundError, match="run not found"):
        load_questions("synthetic", limit=2, exclude_runs=[str(tmp_path / "nowhere")])


def test_the_data_command_replays_and_excludes(run_dir, capsys):
    assert data_main(["--source", "run", "--path", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["uid"] for x in out.out.splitlines()] == uids_in_order(run_dir)
    assert "6 records (run from" in out.err
    assert data_main(["--source", "synthetic", "--split", "val", "--limit", "2", "--exclude-runs", str(run_dir)]) == 0
    used = {json.loads(x)["question"]["question_id"] for x in (run_dir / "rounds.jsonl").read_text().splitlines()}
    ids = [json.loads(x)["question_id"] for x in capsys.readouterr().out.splitlines()]
    assert len(ids) == 2 and not set(ids) & used
