"""``python -m debate_lightning {fit,validate,test}``: LightningCLI over the training modules.

Configs name a LightningModule and a DataModule by class path (``configs/sft.yaml``,
``configs/dpo.yaml``), so every training job (SFT, DPO, online DPO, PPO, probe) goes through
this one CLI. jsonargparse checks every key and type and names the offending one. The resolved
config is saved as ``config.yaml`` in the run's log directory, beside the ``adapter/`` the
modules export. On Slurm, Lightning's ``SLURMEnvironment`` is picked up automatically (ranks,
master address, requeue on preemption); see ``slurm/`` for sbatch templates.

Where a run writes: a logger whose ``save_dir`` the config leaves unset writes under
``--trainer.default_root_dir`` (``outputs`` when that is unset too), and so do the checkpoints,
``config.yaml`` and the adapter, which Lightning puts in the logger's directory.
``--config dpo.yaml`` names a file here or, failing that, a shipped config (``config_files.py``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from debate_lightning.config_files import ConfigNotFound, resolve_config_args

# A logger's save_dir with this value follows --trainer.default_root_dir. It is the default of
# every logger's save_dir (jsonargparse carries the default logger's init_args over to a logger a
# config names without a save_dir), so a config that pins no save_dir honours the root dir.
FOLLOW_ROOT_DIR = "<trainer.default_root_dir>"
FALLBACK_SAVE_DIR = "outputs"  # no root dir given: where runs have always gone

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": FOLLOW_ROOT_DIR}},
    "precision": "32-true",  # CPUs without native bf16 run bf16 matmuls ~300x slower than fp32
}


class DebateCLI(LightningCLI):
    """LightningCLI with the project's defaults: any module/DataModule by class path, CSV logs
    under the trainer's ``default_root_dir``, and ``--ckpt_path last`` across runs."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "python -m debate_lightning"})  # not `__main__.py`
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, run=run, auto_configure_optimizers=False, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        follow_root_dir(config.trainer)

    # Lightning looks for ``last.ckpt`` only in the checkpoint directory of *this* run, which is
    # a new ``version_N`` of an auto-versioned logger, so ``--ckpt_path last`` would never find
    # the previous run's checkpoint. Resolve it to the newest one of any version first.
    def before_fit(self) -> None:
        self._resolve_last_checkpoint("fit")

    def before_validate(self) -> None:
        self._resolve_last_checkpoint("validate")

    def before_test(self) -> None:
        self._resolve_last_checkpoint("test")

    def _resolve_last_checkpoint(self, subcommand: str) -> None:
        config = self.config_init[subcommand]
        if config.get("ckpt_path") != "last":
            return
        found = last_checkpoint(self.trainer)
        if found is not None:
            config.ckpt_path = str(found)
            if self.trainer.is_global_zero:
                print(f"--ckpt_path last: resuming from {found}", file=sys.stderr)


def follow_root_dir(trainer: Namespace) -> None:
    """Point every logger whose ``save_dir`` is unset at the trainer's ``default_root_dir``."""
    root = trainer.get("default_root_dir") or FALLBACK_SAVE_DIR
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init, Namespace) and init.get("save_dir") == FOLLOW_ROOT_DIR:
            init.save_dir = str(root)


def last_checkpoint(trainer: Any) -> Path | None:
    """The newest ``last*.ckpt`` of this run's logger name, whatever its version; None if there
    is none (or a ModelCheckpoint has a fixed ``dirpath``, where Lightning finds it itself)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not trainer.loggers or not callbacks or any(cb.dirpath is not None for cb in callbacks):
        return None
    logger = trainer.loggers[0]
    base = Path(logger.save_dir if logger.save_dir is not None else trainer.default_root_dir, str(logger.name))
    found = [p for p in base.glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` starts with the subcommand (``fit``, ``validate`` or ``test``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = resolve_config_args(argv, options=("-c", "--config"))
    except ConfigNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # We hand LightningCLI the command line itself (with config names resolved), which is what
    # its warning about `args` given beside sys.argv is there to catch; it does not apply here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
    DebateCLI(args=argv)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli_main(sys.argv[1:]))
