"""``python -m debate_lightning {fit,validate,test}``: LightningCLI over the training modules.

Configs name a LightningModule and a DataModule by class path (``configs/sft.yaml``,
``configs/dpo.yaml``), so every training job (SFT, DPO, online DPO, PPO, probe) goes through
this one CLI. jsonargparse checks every key and type and names the offending one. The resolved
config is saved as ``config.yaml`` in the run's log directory, beside the ``adapter/`` the
modules export. On Slurm, Lightning's ``SLURMEnvironment`` is picked up automatically (ranks,
master address, requeue on preemption); see ``slurm/`` for sbatch templates.

One config from laptop to GPU node: ``trainer.precision: auto`` (the default) becomes
``bf16-mixed`` on CUDA with bf16, ``16-mixed`` on older CUDA and ``32-true`` elsewhere, for the
accelerator Lightning will pick (``accelerator: auto``: CUDA where there is one, else the CPU);
the saved ``config.yaml`` records the precision it became.

Where a run writes: a logger whose ``save_dir`` the config leaves unset writes under
``--trainer.default_root_dir`` (``outputs`` when that is unset too), and so do the checkpoints,
``config.yaml`` and the adapter, which go in the run's directory: ``<save_dir>/<name>/version_N``
for the CSV (and TensorBoard) logger, ``<save_dir>/<project>/<run id>`` for Weights & Biases
(``--config loggers/wandb.yaml``), ``<save_dir>/<name>/<version>`` for any other logger
(:class:`DebateTrainer`), so no run overwrites another's. ``--config dpo.yaml`` names a file here or, failing that, a shipped config
(``config_files.py``). API keys come from the environment only: one in a config is refused.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_type_hints

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.accelerators import Accelerator, CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from debate_lightning.config_files import ConfigNotFound, resolve_config_args

# A logger's save_dir with this value follows --trainer.default_root_dir. It is the default of
# every logger's save_dir (jsonargparse carries the default logger's init_args over to a logger a
# config names without a save_dir), so a config that pins no save_dir honours the root dir.
FOLLOW_ROOT_DIR = "<trainer.default_root_dir>"
FALLBACK_SAVE_DIR = "outputs"  # no root dir given: where runs have always gone

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": FOLLOW_ROOT_DIR}},
}

AUTO = "auto"
# Lightning's own type of Trainer(precision=...), read off its signature rather than imported
# from a private module, widened by "auto" below.
LightningPrecision = get_type_hints(Trainer.__init__)["precision"]


class DebateTrainer(Trainer):
    """Lightning's Trainer with ``precision: auto`` and a directory of its own for every run."""

    def __init__(self, *, precision: Union[LightningPrecision, Literal["auto"]] = AUTO, **kwargs: Any) -> None:
        """
        Args:
            precision: ``auto`` (the default): ``bf16-mixed`` on CUDA GPUs with bf16,
                ``16-mixed`` on older ones, ``32-true`` on CPUs and other accelerators, for the
                accelerator this trainer runs on; or any precision Lightning takes.
        """
        if precision == AUTO:
            precision = auto_precision(chosen_accelerator(kwargs.get("accelerator", AUTO)))
        super().__init__(precision=precision, **kwargs)

    @property
    def log_dir(self) -> str | None:
        """The run's own directory, where ``config.yaml``, the adapter and rollouts go.

        CSV and TensorBoard loggers version their directory themselves (``version_N``): Lightning's
        answer stands. For any other logger (W&B, MLflow, ...) Lightning answers the logger's
        ``save_dir``, which every run shares, so a run's ``config.yaml`` and adapter would
        overwrite the previous run's. Here it is ``<save_dir>/<name>/<version>`` (W&B:
        ``<save_dir>/<project>/<run id>``), the directory Lightning already gives that run's
        checkpoints. Before the logger has a version (W&B: until the run starts), Lightning's answer.
        """
        logger = self.loggers[0] if self.loggers else None
        if logger is None or isinstance(logger, (CSVLogger, TensorBoardLogger)) or logger.version is None:
            return super().log_dir
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        root = logger.save_dir if logger.save_dir is not None else self.default_root_dir
        return self.strategy.broadcast(os.path.join(root, str(logger.name), version))


class DebateCLI(LightningCLI):
    """LightningCLI with the project's defaults: any module/DataModule by class path, CSV logs
    under the trainer's ``default_root_dir``, ``precision: auto``, a directory per run whatever
    the logger, and ``--ckpt_path last`` across runs."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("trainer_class", DebateTrainer)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "python -m debate_lightning"})  # not `__main__.py`
        # We hand LightningCLI a command line (cli_main: sys.argv with config names resolved),
        # which is what its warning about `args` given beside sys.argv is there to catch.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
        try:
            super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True,
                             subclass_mode_data=True, args=args, run=run, auto_configure_optimizers=False, **kwargs)
        except BaseException:
            if run:
                finish_tracking(getattr(self, "trainer", None), exit_code=1)
            raise
        if run:
            finish_tracking(self.trainer, exit_code=0)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        found = api_key_in_config(config)
        if found:
            self.parser.error(found)
        follow_root_dir(config.trainer)
        if config.trainer.get("precision") == AUTO:
            accelerator = chosen_accelerator(config.trainer.get("accelerator", AUTO))
            # config.yaml records what ran: rerun anywhere, the saved config computes the same
            # numbers; the portable `auto` stays in the file the user wrote.
            config.trainer.precision = auto_precision(accelerator)
            if rank_zero_only.rank == 0:
                print(f"trainer.precision: auto -> {config.trainer.precision} (accelerator {accelerator})",
                      file=sys.stderr)

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


def chosen_accelerator(flag: Any) -> str:
    """The accelerator Lightning runs on for a ``trainer.accelerator`` value: ``auto`` as Lightning
    picks it (TPU, MPS, CUDA, else CPU), ``gpu`` as MPS or CUDA, an Accelerator (instance or
    ``class_path``) by its class, any other name as given."""
    if isinstance(flag, (Namespace, dict)) and flag.get("class_path"):
        module, _, name = str(flag["class_path"]).rpartition(".")
        flag = getattr(importlib.import_module(module), name)
    if isinstance(flag, Accelerator) or (isinstance(flag, type) and issubclass(flag, Accelerator)):
        kinds = {CUDAAccelerator: "cuda", CPUAccelerator: "cpu", MPSAccelerator: "mps", XLAAccelerator: "tpu"}
        cls = flag if isinstance(flag, type) else type(flag)
        return next((kind for base, kind in kinds.items() if issubclass(cls, base)), cls.__name__)
    flag = str(flag).lower()
    if flag == AUTO:  # Lightning's order (lightning.fabric.utilities.device_parser)
        for cls, kind in ((XLAAccelerator, "tpu"), (MPSAccelerator, "mps"), (CUDAAccelerator, "cuda")):
            if cls.is_available():
                return kind
        return "cpu"
    if flag == "gpu":
        return "mps" if MPSAccelerator.is_available() else "cuda"
    return flag


def auto_precision(accelerator: str, bf16: bool | None = None) -> str:
    """``precision: auto`` on ``accelerator``: ``bf16-mixed`` on CUDA with bf16 (Ampere and
    newer; ``bf16``: whether it has it, asked of torch when None), ``16-mixed`` on older CUDA,
    ``32-true`` on CPUs (most run bf16 matmuls hundreds of times slower than fp32) and on every
    other accelerator (set its mixed precision explicitly)."""
    if accelerator == "cuda":
        if bf16 is None:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if bf16 else "16-mixed"
    return "32-true"


def follow_root_dir(trainer: Namespace) -> None:
    """Point every logger whose ``save_dir`` is unset at the trainer's ``default_root_dir``."""
    root = trainer.get("default_root_dir") or FALLBACK_SAVE_DIR
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init, Namespace) and init.get("save_dir") == FOLLOW_ROOT_DIR:
            init.save_dir = str(root)


def api_key_in_config(config: Namespace, environ: dict[str, str] | None = None) -> str | None:
    """Why ``config`` may not run, if it holds an API key: a non-empty ``api_key`` entry, or the
    value of an ``*API_KEY`` environment variable (``WANDB_API_KEY``, ``OPENAI_API_KEY``, …)
    anywhere. The config is saved as ``config.yaml`` and its command line goes to the tracker's
    run metadata, so a key there would be written out; None when it holds none."""
    environ = os.environ if environ is None else environ
    secrets = {name: value for name, value in environ.items() if name.upper().endswith("API_KEY") and len(value) >= 8}
    for where, key, value in _leaves(config.as_dict()):
        if key.lower().endswith("api_key") and value not in (None, ""):
            return (f"{where}: an API key in a config is refused (config.yaml and the run's logs would "
                    f"keep it); set it in the environment instead (WANDB_API_KEY for W&B)")
        for name, secret in secrets.items():
            if isinstance(value, str) and secret in value:
                return (f"{where} holds the value of ${name}: an API key in a config is refused "
                        f"(config.yaml and the run's logs would keep it); the environment variable is enough")
    return None


def _leaves(node: Any, where: str = "", key: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{where}.{k}" if where else str(k), str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{where}[{i}]", key)
    else:
        yield where, key, node


def finish_tracking(trainer: Trainer | None, exit_code: int) -> None:
    """End the W&B run a WandbLogger of ``trainer`` started. Lightning leaves it open until the
    process exits, and a later run in the same process (a script, a notebook, a test) would log
    into it and share its directory."""
    if trainer is None or not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return
    wandb = sys.modules.get("wandb")  # a WandbLogger that ran imported it; no dependency of ours
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)


def last_checkpoint(trainer: Any) -> Path | None:
    """The newest ``last*.ckpt`` of this run's logger name, whatever its version (a file, or the
    directory of a sharded FSDP checkpoint); None if there is none (or a ModelCheckpoint has a
    fixed ``dirpath``, where Lightning finds it itself)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not trainer.loggers or not callbacks or any(cb.dirpath is not None for cb in callbacks):
        return None
    logger = trainer.loggers[0]
    base = Path(logger.save_dir if logger.save_dir is not None else trainer.default_root_dir, str(logger.name))
    found = [p for p in base.glob("*/checkpoints/last*.ckpt") if p.is_file() or (p / ".metadata").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` starts with the subcommand (``fit``, ``validate`` or ``test``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")  # W&B logs locally unless WANDB_MODE says otherwise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = resolve_config_args(argv, options=("-c", "--config"))
    except ConfigNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    DebateCLI(args=argv)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli_main(sys.argv[1:]))
