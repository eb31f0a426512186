"""report writes md/png/json; rejudge re-scores saved rounds without generating a speech."""

from __future__ import annotations

import json

from tournament_helpers import scripted_config

from debate_lightning.tournament.cli import rejudge_main, report_main, tournament_main
from debate_lightning.tournament.report import PLOTS
from debate_lightning.tournament.results import read_results

QUIET = ["--progress", "false", "--report", "false"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_renders_markdown_plots_and_json(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml", formats=[{"kind": "debate", "num_speeches": 1}, {"kind": "consultancy"},
                                                        {"kind": "consultancy", "consultant_side": 1}])
    out = tmp_path / "out"
    assert tournament_main(["--config", str(cfg), "--output", str(out), *QUIET]) == 0
    assert report_main([str(out), "--bootstrap", "200"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert metrics["rounds"]["judged"] == 36
    assert set(metrics) >= {"accuracy", "calibration", "bradley_terry", "sides", "side_order_test", "quotes", "format_comparisons"}
    md = (out / "report.md").read_text()
    for section in ("## Judge accuracy", "## Debate vs consultancy", "## Calibration", "## Debater ratings",
                    "## Win rates by side", "## Paired test across side orders", "## Quotes"):
        assert section in md
    for name in PLOTS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000, name
        assert f"]({name}.png)" in md
    # The numbers in the markdown are the ones in metrics.json.
    acc = metrics["accuracy"]["overall"]["binary"]
    assert f"{acc['mean']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}]" in md


def test_report_of_a_missing_directory_is_an_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "no results" in capsys.readouterr().err


def test_rejudge_changes_only_the_verdicts(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml")
    src, new = tmp_path / "src", tmp_path / "new"
    assert tournament_main(["--config", str(cfg), "--output", str(src), *QUIET]) == 0
    judge_yaml = tmp_path / "judge.yaml"
    # A judge that always gives P(A) = sigmoid(-0.5 + 1.5) = e/(1+e): every verdict is A.
    judge_yaml.write_text("models:\n  det: {backend: deterministic}\njudge: {model: det, both_orders: false}\n")
    assert rejudge_main([str(src), "--config", str(judge_yaml), "--output", str(new), *QUIET]) == 0
    old_rounds = {r.round_id: r for r in read_results(src)}
    new_rounds = read_results(new)
    assert {r.round_id for r in new_rounds} == set(old_rounds)
    for r in new_rounds:
        o = old_rounds[r.round_id]
        assert r.speeches == o.speeches and r.question == o.question and r.debaters == o.debaters
        assert r.judge == "det" and r.winner == 0 and len(r.p_a_orders) == 1
        assert r.judge_correct == (r.correct_index == 0)
    assert json.loads((new / "rejudge.json").read_text())["rounds"] == len(old_rounds)
    # The output is an ordinary results directory: it can be resumed (nothing to do) and reported.
    assert rejudge_main([str(src), "--config", str(judge_yaml), "--output", str(new), *QUIET]) == 2
    assert rejudge_main([str(src), "--config", str(judge_yaml), "--output", str(new), "--resume", "true", *QUIET]) == 0
    assert len(read_results(new)) == len(old_rounds)
    assert rejudge_main([str(src), "--config", str(judge_yaml), "--output", str(src), *QUIET]) == 2
