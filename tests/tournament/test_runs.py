"""Runs that survive kills, shards that merge, and configs that must not mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tournament_helpers import HERE, REPO, make_result, scripted_config

from debate_lightning.tournament.cli import merge_main, tournament_main
from debate_lightning.tournament.merge import MergeConflict, merge_results
from debate_lightning.tournament.results import ResultsFile, read_results

QUIET = ["--progress", "false", "--report", "false"]


def ids(directory) -> list[str]:
    return [r.round_id for r in read_results(directory)]


def run(cfg, out, *extra) -> int:
    return tournament_main(["--config", str(cfg), "--output", str(out), *QUIET, *extra])


def test_real_kill_then_resume_equals_uninterrupted_run(tmp_path):
    slow = {"r": {"backend": "slow", "options": {"delay": 0.1}}}
    cfg = scripted_config(tmp_path / "t.yaml", models=slow, rounds_in_flight=1, data={"source": "synthetic", "limit": 4})
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(HERE / "slow_tournament.py"), "--config", str(cfg), "--output", str(out), *QUIET]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rounds = out / "rounds.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not rounds.is_file() or len(rounds.read_bytes().splitlines()) < 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(ids(out))
    total = 4 * 2 * 2  # questions x side orders x ordered pairs
    assert 2 <= killed_at < total, "the kill came too late to test anything"

    # Resuming without --resume refuses to touch the results.
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 2
    # A kill mid-write leaves half a line: resume cuts it and replays that round only.
    with rounds.open("ab") as f:
        f.write(b'{"round_id": "half-written", "questi')
    done = subprocess.run([*cmd, "--resume", "true"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dropped an incomplete last line" in done.stderr
    resumed = ids(out)
    assert len(resumed) == len(set(resumed)) == total  # no lost and no duplicated rounds
    assert "half-written" not in rounds.read_text()

    fresh = tmp_path / "fresh"
    assert run(scripted_config(tmp_path / "f.yaml", rounds_in_flight=1, data={"source": "synthetic", "limit": 4}), fresh) == 0
    assert set(resumed) == set(ids(fresh))
    # A second resume has nothing left to do and changes nothing.
    before = rounds.read_bytes()
    assert subprocess.run([*cmd, "--resume", "true"], env=env, capture_output=True).returncode == 0
    assert rounds.read_bytes() == before


def test_partial_last_line_is_repaired_and_tolerated(tmp_path):
    rf = ResultsFile(tmp_path)
    rf.append(make_result("q1", 0, 0.9))
    with rf.path.open("ab") as f:
        f.write(b'{"round_id": "x", "qu')
    assert [r.round_id for r in rf.results()] == [make_result("q1", 0, 0.9).round_id]  # tolerated on read
    assert rf.repair() > 0 and rf.path.read_bytes().endswith(b"\n") and rf.repair() == 0


def test_resume_with_a_different_config_is_refused(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml")
    out = tmp_path / "out"
    assert run(cfg, out) == 0
    other = scripted_config(tmp_path / "o.yaml", formats=[{"kind": "debate", "num_speeches": 2}])
    assert run(other, out, "--resume", "true") == 2
    # Batch size may change between a run and its resume.
    assert run(scripted_config(tmp_path / "b.yaml", rounds_in_flight=5), out, "--resume", "true") == 0


def test_shards_merged_equal_the_unsharded_run(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml", formats=[{"kind": "debate", "num_speeches": 1}, {"kind": "consultancy"}])
    full = tmp_path / "full"
    assert run(cfg, full) == 0
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, d in enumerate(shards):
        assert run(cfg, d, "--shard", f"{i}/3") == 0
    parts = [set(ids(d)) for d in shards]
    assert all(parts) and sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint, none empty
    merged = tmp_path / "merged"
    assert merge_main([*map(str, shards), "--output", str(merged)]) == 0
    assert sorted(ids(merged)) == sorted(ids(full))
    assert json.loads((merged / "merge.json").read_text())["rounds"] == len(ids(full))
    assert (merged / "config.yaml").is_file()
    # Merging into a directory that has results, or merging a shard twice with different results, fails.
    assert merge_main([str(shards[0]), "--output", str(merged)]) == 2
    with pytest.raises(MergeConflict, match="finished in both"):
        merge_results([full, shards[0]], tmp_path / "dup")
    # Identical copies are tolerated (the same shard listed twice).
    assert merge_results([shards[0], shards[0]], tmp_path / "same")["identical_duplicates"] == len(parts[0])


def test_merge_refuses_shards_of_different_tournaments(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(scripted_config(tmp_path / "a.yaml"), a, "--shard", "0/2") == 0
    assert run(scripted_config(tmp_path / "b.yaml", seed=7), b, "--shard", "1/2") == 0
    with pytest.raises(MergeConflict, match="different configs"):
        merge_results([a, b], tmp_path / "m")
    assert merge_results([a, b], tmp_path / "m2", force_config=True)["rounds"] == len(ids(a)) + len(ids(b))


def test_bad_shard_and_schedule_kinds(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml")
    assert run(cfg, tmp_path / "o", "--shard", "3/3") == 2
    assert run(cfg, tmp_path / "o", "--shard", "x") == 2
    for kind, extra, n in (("self_play", {}, 12), ("capped_round_robin", {"cap": 2}, 8), ("capped_round_robin", {"cap": 1}, 4), ("custom", {"matchups": [["a", "b"]]}, 6)):
        c = scripted_config(tmp_path / f"{kind}.yaml", schedule={"kind": kind, **extra})
        out = tmp_path / f"{kind}{extra.get('cap', '')}"
        assert run(c, out) == 0
        assert len(ids(out)) == n, kind


def test_progress_bar_shows_rate_and_eta(tmp_path, capsys):
    from debate_lightning.tournament.runner import Progress

    bar = Progress(10, 4, enabled=True)
    time.sleep(0.05)
    bar.update(2)
    text = str(bar.bar)
    bar.close()
    assert "6/10 rounds" in text and "rounds/min" in text and "ETA" in text
