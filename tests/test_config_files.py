"""``--config`` values: a file where the user is, else a shipped config by name, else an error."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from debate_lightning import config_files
from debate_lightning.config_files import ConfigNotFound, resolve_config, resolve_config_args, shipped_configs

PACKAGE_CONFIGS = Path(config_files.__file__).parent / "configs"


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A stand-in for debate_lightning/configs with a nested config, and an empty working dir."""
    root = tmp_path / "package_configs"
    (root / "strategies").mkdir(parents=True)
    (root / "dpo.yaml").write_text("model: {}\n")
    (root / "strategies" / "fsdp.yaml").write_text("trainer: {strategy: fsdp}\n")
    monkeypatch.setattr(config_files, "SHIPPED_CONFIGS", root)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


def test_the_shipped_configs_are_the_package_data():
    names = shipped_configs()
    assert names == sorted([p.name for p in PACKAGE_CONFIGS.glob("*.yaml")]
                           + [p.relative_to(PACKAGE_CONFIGS).as_posix() for p in PACKAGE_CONFIGS.glob("*/*.yaml")])
    assert "strategies/fsdp.yaml" in names
    assert {"dpo.yaml", "sft.yaml", "tournament.yaml"} <= set(names)


@pytest.mark.parametrize("name", ["dpo.yaml", "dpo", "configs/dpo.yaml", "configs/dpo"])
def test_a_name_that_is_no_file_here_is_the_shipped_config(shipped, name):
    assert resolve_config(name) == (str(shipped / "dpo.yaml"), True)


@pytest.mark.parametrize("name", ["strategies/fsdp.yaml", "strategies/fsdp", "configs/strategies/fsdp.yaml"])
def test_nested_shipped_configs_resolve(shipped, name):
    assert resolve_config(name) == (str(shipped / "strategies" / "fsdp.yaml"), True)


def test_a_file_here_wins_and_is_used_as_given(shipped):
    Path("dpo.yaml").write_text("model: {mine: 1}\n")
    assert resolve_config("dpo.yaml") == ("dpo.yaml", False)
    # `dpo` is no file here, so it still means the shipped dpo.yaml.
    assert resolve_config("dpo") == (str(shipped / "dpo.yaml"), True)


def test_an_inline_yaml_mapping_passes_through(shipped):
    assert resolve_config("{trainer: {max_steps: 1}}") == ("{trainer: {max_steps: 1}}", False)


@pytest.mark.parametrize("name", ["dpoo.yaml", "nothing", "../dpo.yaml", "/nonexistent/dpo.yaml", ""])
def test_an_unknown_name_is_an_error_listing_the_shipped_configs(shipped, name):
    with pytest.raises(ConfigNotFound) as info:
        resolve_config(name)
    message = str(info.value)
    assert f"--config {name}:" in message and "dpo.yaml, strategies/fsdp.yaml" in message
    assert isinstance(info.value, FileNotFoundError)


def test_every_config_option_is_rewritten_and_each_shipped_one_is_named_once(shipped):
    Path("local.yaml").write_text("trainer: {}\n")
    log = io.StringIO()
    argv = ["fit", "--config", "dpo.yaml", "--config", "strategies/fsdp", "--config=local.yaml",
            "-c", "dpo", "--model.init_args.config", "dpo", "--trainer.max_steps=1"]
    out = resolve_config_args(argv, options=("-c", "--config"), log=log)
    dpo, fsdp = str(shipped / "dpo.yaml"), str(shipped / "strategies" / "fsdp.yaml")
    assert out == ["fit", "--config", dpo, "--config", fsdp, "--config=local.yaml",
                   "-c", dpo, "--model.init_args.config", "dpo", "--trainer.max_steps=1"]
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and dpo in lines[0] and fsdp in lines[1] and dpo in lines[2]


def test_config_equals_form_and_errors(shipped):
    log = io.StringIO()
    assert resolve_config_args(["--config=dpo"], log=log) == [f"--config={shipped / 'dpo.yaml'}"]
    with pytest.raises(ConfigNotFound, match="--config nope"):
        resolve_config_args(["--config=nope"], log=log)
    # A trailing --config without a value is left for the parser to complain about.
    assert resolve_config_args(["--config"], log=log) == ["--config"]
