"""Experiment tracking: the shipped ``configs/loggers/wandb.yaml`` over a shipped fit config.

Real offline W&B runs of ``dpo.yaml`` on the tiny model: every run gets its own directory (its
``config.yaml``, checkpoints and adapter, named by its W&B run id), the offline run holds the
metrics, and no API key reaches a file or the console.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2  # wandb is a test requirement: `make setup` installs .[dev,wandb]

from debate_lightning.cli import cli_main

CONFIGS = Path(__file__).resolve().parents[2] / "debate_lightning" / "configs"
PROJECT = "debate-lightning"  # loggers/wandb.yaml
KEY = "f4k3w4ndb" * 4 + "abcd"  # 40 characters, like a W&B key; offline runs never check it


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory, W&B's own caches and config inside tmp_path."""
    for var, name in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / name))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def fit(tiny_model: str, root: Path, *extra: str) -> None:
    """``fit --config dpo.yaml --config loggers/wandb.yaml`` (names as a user types them), on the
    tiny model and 4 synthetic pairs."""
    assert cli_main(["fit", "--config", "dpo.yaml", "--config", "loggers/wandb.yaml",
                     f"--model.init_args.policy.model={tiny_model}", "--data.init_args.train=synthetic:4",
                     "--data.init_args.batch_size=2", f"--trainer.default_root_dir={root}",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]) == 0


def records(path: Path):
    """The protobuf records of a ``.wandb`` file: LevelDB's log format (a 7-byte ``:W&B`` header,
    then 32 KiB blocks of chunks, each ``crc32 | length | type`` + data; a record is one FULL chunk
    or FIRST, MIDDLE..., LAST), each chunk's CRC checked."""
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, length, kind) == (0, 0, 0):  # zero padding at a block's end
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad chunk at byte {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_run(run_dir: Path) -> tuple[wandb_internal_pb2.RunRecord, list[dict]]:
    """The run record and the history rows (metric -> value) of one ``offline-run-*`` directory."""
    (file,) = run_dir.glob("run-*.wandb")
    run, history = None, []
    for record in records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            # wandb-core writes a metric's name as a one-part nested_key, older writers as key
            history.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    assert run is not None, f"{file}: no run record"
    return run, history


def test_successive_wandb_runs_each_get_their_own_directory(tiny_model, workdir, capsys):
    root = workdir / "root"
    fit(tiny_model, root, "--trainer.max_steps=1")
    fit(tiny_model, root, "--trainer.max_steps=2", "--ckpt_path=last")  # resumes the first run's last.ckpt

    offline = {p.name.rsplit("-", 1)[1]: p for p in (root / "wandb").glob("offline-run-*")}
    run_dirs = sorted((root / PROJECT).iterdir())
    assert len(offline) == 2 and {r.name for r in run_dirs} == set(offline)  # each named by its W&B run id
    for run_dir in run_dirs:  # ... and each with all of its own files
        for name in ("config.yaml", "adapter/adapter_model.safetensors", "checkpoints/last.ckpt"):
            assert (run_dir / name).is_file(), f"{run_dir.name}: no {name}"
    configs = {r: yaml.safe_load((r / "config.yaml").read_text()) for r in run_dirs}
    assert sorted(c["trainer"]["max_steps"] for c in configs.values()) == [1, 2]
    runs = sorted(run_dirs, key=lambda r: configs[r]["trainer"]["max_steps"])
    first = runs[0]
    assert f"resuming from {first / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err

    for config in configs.values():  # the record reruns as a new run under the same root, not into this one
        logger = config["trainer"]["logger"]
        assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        assert logger["init_args"]["save_dir"] == str(root) and logger["init_args"]["project"] == PROJECT
    adapters = [(r / "adapter" / "adapter_model.safetensors").read_bytes() for r in runs]
    assert adapters[0] != adapters[1]  # the second run trained a step more; nothing was overwritten

    # each offline run holds its own steps: the first step 0, the resumed second step 1
    steps = [[row["trainer/global_step"] for row in offline_run(offline[r.name])[1] if "loss" in row] for r in runs]
    assert steps == [[0], [1]]


def test_an_offline_run_holds_the_metrics_and_no_api_key(tiny_model, workdir, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the CLI makes it offline unless told otherwise
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    root = workdir / "root"
    fit(tiny_model, root, "--trainer.max_steps=2", "--trainer.logger.init_args.group=study-1")

    (offline,) = (root / "wandb").glob("offline-run-*")
    run, history = offline_run(offline)
    assert (run.project, run.display_name, run.run_group) == (PROJECT, "dpo", "study-1")
    rows = [row for row in history if "loss" in row]
    assert [row["trainer/global_step"] for row in rows] == [0, 1]
    for name in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert all(math.isfinite(row[name]) for row in rows), name
    # Step 0: the LoRA policy still equals its reference (adapters start at B = 0), so the DPO
    # margin is 0 and the sigmoid loss is -log(sigmoid(0)) = log 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)

    out, err = capsys.readouterr()
    assert KEY not in out + err
    leaked = [p for p in workdir.parent.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [], f"the API key was written to {leaked}"
    assert (root / PROJECT / run.run_id / "config.yaml").is_file()
