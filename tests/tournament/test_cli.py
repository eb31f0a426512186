"""The tournament command line: switches that work bare or with a value, configs found by name."""

from __future__ import annotations

import pytest
from tournament_helpers import REPO, scripted_config

from debate_lightning.config_files import ConfigNotFound
from debate_lightning.tournament.cli import parse_tournament_args, tournament_main
from debate_lightning.tournament.results import read_results

SHIPPED = REPO / "debate_lightning" / "configs"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (False, True, True)),
        (["--resume"], (True, True, True)),
        (["--resume", "true"], (True, True, True)),
        (["--resume", "false"], (False, True, True)),
        (["--resume", "yes", "--report", "no"], (True, True, False)),
        (["--resume", "--report", "false"], (True, True, False)),  # a bare switch before another option
        (["--report", "false", "--resume"], (True, True, False)),  # ... and as the last argument
        (["--no_report", "--no_progress"], (False, False, False)),
        (["--progress", "false", "--progress"], (False, True, True)),  # the last one wins
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_switches_work_bare_or_with_a_value(tmp_path, flags, expected):
    cfg = scripted_config(tmp_path / "t.yaml")
    _, opts = parse_tournament_args(["--config", str(cfg), *flags])
    assert (opts["resume"], opts["progress"], opts["report"]) == expected


def test_a_switch_with_a_non_boolean_value_is_an_error_naming_it(tmp_path):
    cfg = scripted_config(tmp_path / "t.yaml")
    with pytest.raises(Exception, match="--resume"):
        parse_tournament_args(["--config", str(cfg), "--resume", "maybe"])


def test_bare_resume_continues_the_run(tmp_path, capsys):
    cfg = scripted_config(tmp_path / "t.yaml")
    out = tmp_path / "out"
    quiet = ["--config", str(cfg), "--output", str(out), "--no_progress", "--no_report"]
    assert tournament_main(quiet) == 0
    first = [r.round_id for r in read_results(out)]
    assert first
    assert tournament_main(quiet) == 2  # an existing run is not touched without --resume
    assert "resume" in capsys.readouterr().err
    assert tournament_main([*quiet, "--resume"]) == 0
    assert [r.round_id for r in read_results(out)] == first  # nothing left to play, nothing duplicated


def test_a_bare_config_name_finds_the_shipped_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after a pip install
    by_path, _ = parse_tournament_args(["--config", str(SHIPPED / "debate_vs_consultancy.yaml")])
    assert capsys.readouterr().err == ""  # a file that exists is used silently
    for name in ("debate_vs_consultancy.yaml", "debate_vs_consultancy", "configs/debate_vs_consultancy.yaml"):
        by_name, _ = parse_tournament_args(["--config", name])
        assert by_name == by_path
        [line] = capsys.readouterr().err.splitlines()
        assert name in line and str(SHIPPED / "debate_vs_consultancy.yaml") in line


def test_a_file_in_the_working_directory_wins_over_the_shipped_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scripted_config(tmp_path / "tournament.yaml", output="mine")
    cfg, _ = parse_tournament_args(["--config", "tournament.yaml"])
    assert cfg.output == "mine" and cfg.models["r"].backend == "random"
    assert capsys.readouterr().err == ""


def test_an_unknown_config_name_is_an_error_listing_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigNotFound, match="tournament.yaml"):
        parse_tournament_args(["--config", "tournamnet.yaml"])
    assert tournament_main(["--config=tournamnet.yaml"]) == 2
    err = capsys.readouterr().err
    assert "tournamnet.yaml" in err and "debate_vs_consultancy.yaml" in err and str(tmp_path) in err
