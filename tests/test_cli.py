"""``fit`` on a tiny DPO config: shipped configs by name, everything under
``--trainer.default_root_dir``, and ``--ckpt_path last`` picking up the previous run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from debate_lightning.cli import FALLBACK_SAVE_DIR, FOLLOW_ROOT_DIR, DebateCLI, cli_main, follow_root_dir

SHIPPED = Path(__file__).resolve().parents[1] / "debate_lightning" / "configs"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _tiny(node, model: str):
    """The shipped config's node with every ``embedded`` model swapped for the tiny one."""
    if isinstance(node, dict):
        return {k: _tiny(v, model) for k, v in node.items()}
    if isinstance(node, list):
        return [_tiny(v, model) for v in node]
    return model if node == "embedded" else node


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """dpo.yaml's model on the tiny Llama, 4 synthetic pairs, and a trainer of our own whose
    logger names no save_dir; the working directory is an empty tmp dir."""
    shipped = yaml.safe_load((SHIPPED / "dpo.yaml").read_text())
    doc = {
        "seed_everything": 0,
        "model": _tiny(shipped["model"], str(tiny_model_dir)),
        "data": {"class_path": shipped["data"]["class_path"], "init_args": {"train": "synthetic:4", "batch_size": 2}},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 1, "log_every_n_steps": 1,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "tiny"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "every_n_train_steps": 1}}],
        },
    }
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return sorted({int(row["step"]) for row in csv.DictReader(f)})


def test_everything_lands_under_default_root_dir_and_ckpt_path_last_resumes(tiny_config, capsys):
    work = tiny_config.parent
    assert cli_main(["fit", "--config", "tiny.yaml", "--trainer.default_root_dir", "root", *QUIET]) == 0
    first = work / "root" / "tiny" / "version_0"
    for name in ("metrics.csv", "config.yaml", "checkpoints/last.ckpt", "adapter/adapter_model.safetensors"):
        assert (first / name).is_file(), name
    assert sorted(p.name for p in work.iterdir()) == ["root", "tiny.yaml"]  # no outputs/, no lightning_logs/
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == "root"
    assert _steps(first) == [0]
    capsys.readouterr()

    # A new run is a new version; `last` means the previous run's last checkpoint, so the
    # second run starts at step 1 and does one step only.
    assert cli_main(["fit", "--config", "tiny.yaml", "--trainer.default_root_dir", "root", "--trainer.max_steps", "2",
                     "--ckpt_path", "last", *QUIET]) == 0
    assert f"resuming from {Path('root/tiny/version_0/checkpoints/last.ckpt')}" in capsys.readouterr().err
    second = work / "root" / "tiny" / "version_1"
    assert _steps(second) == [1]
    assert (second / "checkpoints" / "last.ckpt").is_file() and (second / "adapter").is_dir()


def _parsed_logger(argv: list[str]):
    cli = DebateCLI(args=argv, run=False)
    return cli.trainer.logger


def test_logger_save_dir_follows_root_dir_unless_set(tiny_config):
    assert _parsed_logger(["--config", "tiny.yaml", "--trainer.default_root_dir", "elsewhere"]).save_dir == "elsewhere"
    # No root dir given: where runs have always gone.
    assert _parsed_logger(["--config", "tiny.yaml"]).save_dir == FALLBACK_SAVE_DIR
    explicit = ["--config", "tiny.yaml", "--trainer.default_root_dir", "elsewhere", "--trainer.logger.save_dir", "mine"]
    assert _parsed_logger(explicit).save_dir == "mine"


def test_follow_root_dir_handles_lists_and_leaves_other_loggers_alone():
    def logger(save_dir):
        return Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=save_dir))

    loggers = [logger(FOLLOW_ROOT_DIR), logger("pinned"), logger(FOLLOW_ROOT_DIR)]
    trainer = Namespace(default_root_dir="runs/a", logger=loggers)
    follow_root_dir(trainer)
    assert [lg.init_args.save_dir for lg in trainer.logger] == ["runs/a", "pinned", "runs/a"]
    for value in (False, None, True):
        off = Namespace(default_root_dir="runs/a", logger=value)
        follow_root_dir(off)
        assert off.logger is value


def test_fit_finds_a_shipped_config_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", "dpo", "--print_config"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    shipped = yaml.safe_load((SHIPPED / "dpo.yaml").read_text())
    assert printed["model"]["class_path"] == shipped["model"]["class_path"]
    assert printed["trainer"]["default_root_dir"] == shipped["trainer"]["default_root_dir"]
    assert f"using the shipped {SHIPPED / 'dpo.yaml'}" in err
    assert list(tmp_path.iterdir()) == []  # printing the config writes nothing


def test_fit_with_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["fit", "--config=dpoo.yaml"]) == 2
    err = capsys.readouterr().err
    assert "dpoo.yaml" in err and "dpo.yaml" in err and "sft.yaml" in err
