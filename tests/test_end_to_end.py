"""The real embedded model through the real CLI: what `make run` does, shrunk to two rounds."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "debate_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def small_config(tmp_path, **changes):
    cfg = yaml.safe_load((ROOT / "configs/tournament.yaml").read_text())
    cfg["data"]["limit"] = 1
    cfg["debaters"][0]["max_new_tokens"] = 12
    cfg["output"] = str(tmp_path / "out")
    cfg.update(changes)
    path = tmp_path / "tournament.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_default_tournament_on_embedded_model(tmp_path):
    config = small_config(tmp_path)
    proc = run_cli("tournament", "--config", str(config), "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "judge accuracy:" in proc.stdout
    rounds = [json.loads(line) for line in (tmp_path / "out/rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2  # one question, both side orders
    assert {r["question"]["uid"] for r in rounds} == {rounds[0]["question"]["question_id"] + s for s in (":c0", ":c1")}
    for r in rounds:
        assert r["status"] == "ok" and 0.0 < r["p_a"] < 1.0
        assert len(r["speeches"]) == 2 and all(s["num_tokens"] > 0 for s in r["speeches"])
        assert all("quotes" in s for s in r["speeches"]) and set(r["quote_stats"]) == {"0", "1"}
        assert r["judge_correct"] == (r["winner"] == r["correct_index"])
    saved = yaml.safe_load((tmp_path / "out/config.yaml").read_text())
    assert saved["data"]["limit"] == 1

    # A second run refuses to mix results; --resume finds nothing left to do.
    again = run_cli("tournament", "--config", str(config), "--progress", "false")
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run_cli("tournament", "--config", str(config), "--progress", "false", "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len((tmp_path / "out/rounds.jsonl").read_text().splitlines()) == 2


def test_config_errors_name_the_key(tmp_path):
    config = small_config(tmp_path, judje={"model": "embedded"})
    proc = run_cli("tournament", "--config", str(config))
    assert proc.returncode == 2
    assert "judje" in proc.stderr
    config = small_config(tmp_path, judge={"model": "gpt-nothing"})
    proc = run_cli("tournament", "--config", str(config))
    assert proc.returncode == 2 and "judge.model" in proc.stderr and "gpt-nothing" in proc.stderr


def test_data_command_prints_questions():
    proc = run_cli("data", "--source", "synthetic", "--split", "val", "--limit", "2", "--both-orders")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"story_title", "story", "question", "positions", "correct_index", "split"} <= set(row)
        assert row["split"] == "val"
