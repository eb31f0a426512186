"""``python -m debate_lightning``: the usage line, and every command reaches its own CLI."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from debate_lightning.__main__ import COMMANDS, USAGE, main


def test_usage_without_a_command_and_for_an_unknown_one(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.strip() == USAGE
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.strip() == USAGE
    assert main(["tornament"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'tornament'" in err and USAGE in err
    assert all(name in USAGE for name in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_dispatches_to_its_cli(command, capsys):
    module_name, func_name = COMMANDS[command].split(":")
    assert callable(getattr(importlib.import_module(module_name), func_name))
    try:
        code = main([command, "--help"])
    except SystemExit as e:  # argparse-based CLIs exit after printing help
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m debate_lightning") and command in out.splitlines()[0]


def test_the_module_runs_as_a_program():
    argv = [sys.executable, "-m", "debate_lightning", "report", "--help"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0 and "usage: python -m debate_lightning report" in done.stdout
