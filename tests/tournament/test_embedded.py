"""End to end on the real embedded model: the default tournament config, shrunk, then its report."""

from __future__ import annotations

import json

import pytest
from tournament_helpers import REPO

from debate_lightning.tournament.cli import report_main, tournament_main


@pytest.mark.slow
def test_default_tournament_on_the_embedded_model_reports(tmp_path):
    out = tmp_path / "out"
    argv = ["--config", str(REPO / "configs" / "tournament.yaml"), "--output", str(out), "--data.limit", "1",
            "--debaters", '[{"name": "smollm2", "model": "embedded", "max_new_tokens": 8}]',
            "--progress", "false", "--report", "false"]
    assert tournament_main(argv) == 0
    assert report_main([str(out), "--bootstrap", "100"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["rounds"]["judged"] == 2 and m["judges"] == ["embedded"]
    assert 0.0 <= m["accuracy"]["overall"]["prob"]["mean"] <= 1.0
    assert (out / "calibration.png").is_file() and (out / "report.md").is_file()
