"""``fit`` on a tiny DPO config: shipped configs by name, everything under
``--trainer.default_root_dir``, ``--ckpt_path last`` picking up the previous run, ``precision:
auto`` per accelerator, and API keys kept out of configs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

from debate_lightning.cli import (
    FALLBACK_SAVE_DIR,
    FOLLOW_ROOT_DIR,
    DebateCLI,
    DebateTrainer,
    api_key_in_config,
    auto_precision,
    chosen_accelerator,
    cli_main,
    follow_root_dir,
)

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


# -- precision: auto ------------------------------------------------------------------------------

def test_auto_precision_per_accelerator():
    assert auto_precision("cuda", bf16=True) == "bf16-mixed"   # Ampere and newer
    assert auto_precision("cuda", bf16=False) == "16-mixed"    # V100, T4
    assert auto_precision("cpu") == "32-true"
    for other in ("mps", "tpu", "hpu"):
        assert auto_precision(other) == "32-true"
    # asked of torch when not given: here there is no CUDA device, so no bf16 on it
    assert auto_precision("cuda") == ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                      else "16-mixed")


def test_chosen_accelerator_is_the_one_lightning_runs_on():
    here = "mps" if MPSAccelerator.is_available() else "cuda" if CUDAAccelerator.is_available() else "cpu"
    assert chosen_accelerator("auto") == here
    assert chosen_accelerator("cpu") == "cpu" and chosen_accelerator("cuda") == "cuda"
    assert chosen_accelerator("gpu") == ("mps" if MPSAccelerator.is_available() else "cuda")
    assert chosen_accelerator(Namespace(class_path="lightning.pytorch.accelerators.CUDAAccelerator")) == "cuda"
    assert chosen_accelerator({"class_path": "lightning.pytorch.accelerators.CPUAccelerator"}) == "cpu"
    assert chosen_accelerator(CPUAccelerator()) == "cpu"


def test_debate_trainer_resolves_auto_itself_and_keeps_an_explicit_precision(tmp_path):
    common = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    assert DebateTrainer(**common).precision == "32-true"  # default: auto
    assert DebateTrainer(precision="64-true", **common).precision == "64-true"


def test_cli_precision_auto_is_recorded_resolved_and_an_explicit_one_is_kept(tiny_config, capsys):
    cli = DebateCLI(args=["--config", "tiny.yaml", "--trainer.precision", "auto"], run=False)
    assert cli.trainer.precision == cli.config.trainer.precision == "32-true"
    assert "trainer.precision: auto -> 32-true (accelerator cpu)" in capsys.readouterr().err
    cli = DebateCLI(args=["--config", "tiny.yaml", "--trainer.precision", "64-true"], run=False)
    assert cli.trainer.precision == cli.config.trainer.precision == "64-true"
    assert "trainer.precision" not in capsys.readouterr().err


def test_a_wrong_precision_is_an_error_naming_the_key(tiny_config, capsys):
    with pytest.raises(SystemExit) as info:
        DebateCLI(args=["--config", "tiny.yaml", "--trainer.precision", "bf32"], run=False)
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert "trainer.precision" in err and "bf32" in err


# -- API keys -------------------------------------------------------------------------------------

KEY = "d3b4t3" * 6 + "0123"  # 40 characters, like a W&B key


def test_an_api_key_in_a_config_is_refused_naming_where():
    def config(**logger_args):
        return Namespace(trainer=Namespace(logger=Namespace(
            class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(project="p", **logger_args))))

    env = {"WANDB_API_KEY": KEY, "OPENAI_API_KEY": "sk-proj-0penai", "HOME": "/home/x"}
    assert api_key_in_config(config(notes="fine"), env) is None
    found = api_key_in_config(config(notes=f"key {KEY}"), env)
    assert "trainer.logger.init_args.notes holds the value of $WANDB_API_KEY" in found and KEY not in found
    found = api_key_in_config(config(settings={"api_key": "abc"}), {})
    assert found.startswith("trainer.logger.init_args.settings.api_key: an API key in a config is refused")
    found = api_key_in_config(Namespace(data=Namespace(judge=[Namespace(options={"x": "sk-proj-0penai"})])), env)
    assert found.startswith("data.judge[0].options.x holds the value of $OPENAI_API_KEY")
    # naming the variable that holds a key is how keys are meant to be given
    assert api_key_in_config(Namespace(judge=Namespace(options={"api_key_env": "OPENAI_API_KEY"})), env) is None


def test_fit_refuses_a_key_on_the_command_line_without_printing_it(tiny_config, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", "tiny.yaml", "--trainer.default_root_dir", KEY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "trainer.default_root_dir holds the value of $WANDB_API_KEY" in err and KEY not in err
    assert sorted(p.name for p in tiny_config.parent.iterdir()) == ["tiny.yaml"]  # nothing ran, nothing written
