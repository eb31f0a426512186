"""``python -m debate_lightning {fit,validate,test}``: LightningCLI over the training modules.

Configs name a LightningModule and a DataModule by class path (``configs/sft.yaml``,
``configs/dpo.yaml``), so every training job (SFT, DPO, online DPO, PPO, probe) goes through
this one CLI. jsonargparse checks every key and type and names the offending one. The resolved
config is saved as ``config.yaml`` in the run's log directory, beside the ``adapter/`` the
modules export. On Slurm, Lightning's ``SLURMEnvironment`` is picked up automatically (ranks,
master address, requeue on preemption); see ``slurm/`` for sbatch templates.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs"}},
    "precision": "32-true",  # CPUs without native bf16 run bf16 matmuls ~300x slower than fp32
}


class DebateCLI(LightningCLI):
    """LightningCLI with the project's defaults: any module/DataModule by class path, CSV logs."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, run=run, auto_configure_optimizers=False, **kwargs)


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` starts with the subcommand (``fit``, ``validate`` or ``test``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    DebateCLI(args=argv)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli_main(sys.argv[1:]))
