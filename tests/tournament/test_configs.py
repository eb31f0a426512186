"""Every tournament YAML in configs/ parses with the tournament parser; the format comparison runs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from tournament_helpers import REPO

from debate_lightning.models.registry import ModelSpec
from debate_lightning.tournament.cli import parse_tournament_args, tournament_parser

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TOURNAMENT_CONFIGS = [p for p in CONFIGS if {"formats", "debaters"} & set(yaml.safe_load(p.read_text()) or {})]


def test_the_tournament_configs_are_found():
    names = {p.name for p in TOURNAMENT_CONFIGS}
    assert {"tournament.yaml", "debate_vs_consultancy.yaml"} <= names


@pytest.mark.parametrize("path", TOURNAMENT_CONFIGS, ids=lambda p: p.name)
def test_tournament_config_parses_and_checks(path):
    parser = tournament_parser()
    ns = parser.parse_args(["--config", str(path)])
    assert ns.output
    cfg, opts = parse_tournament_args(["--config", str(path)])
    cfg.check()
    assert opts["resume"] is False and cfg.formats


def test_unknown_key_names_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("judge: {model: embedded, bothorders: true}\n")
    with pytest.raises(Exception, match="bothorders"):
        parse_tournament_args(["--config", str(bad)])


def test_debate_vs_consultancy_runs_on_scripted_models_and_reports_the_difference(tmp_path):
    from debate_lightning.tournament.report import write_report
    from debate_lightning.tournament.runner import run_tournament

    cfg, _ = parse_tournament_args(["--config", str(REPO / "configs" / "debate_vs_consultancy.yaml")])
    cfg = dataclasses.replace(cfg, models={"embedded": ModelSpec(backend="random")}, output=str(tmp_path / "out"))
    results = run_tournament(cfg, progress=False)
    kinds = {r.format["kind"] for r in results}
    assert kinds == {"debate", "consultancy"} and len(results) == 8 * 2 * 3
    # The same questions in both formats.
    by_kind = {k: {r.question["uid"] for r in results if r.format["kind"] == k} for k in kinds}
    assert by_kind["debate"] == by_kind["consultancy"]
    m = write_report(tmp_path / "out", n_boot=200)
    [comp] = m["format_comparisons"]
    assert comp["a"] == "debate" and comp["b"] == "consultancy" and comp["questions"] == 8
    assert comp["binary"]["ci"][0] <= comp["binary"]["difference"] <= comp["binary"]["ci"][1]
    assert "## Debate vs consultancy" in (tmp_path / "out" / "report.md").read_text()


def test_debater_sampling_and_offline_replay_keys_parse(tmp_path):
    cfg, _ = parse_tournament_args([
        "--config", "tournament.yaml",
        "--debaters", '[{"name": "a", "model": "embedded", "repetition_penalty": 1.3, "top_k": 5}]',
        "--models", '{"embedded": {"backend": "hf"}, "o": {"backend": "offline", "path": "runs/t1", "debater": "a"}}'])
    params = cfg.debaters[0].sampling(seed=1)
    assert params.repetition_penalty == 1.3 and params.top_k == 5 and params.seed == 1
    assert cfg.models["o"].debater == "a" and cfg.models["o"].path == "runs/t1"
