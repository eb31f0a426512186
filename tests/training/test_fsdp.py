"""FSDP2 (``configs/strategies/fsdp.yaml``) on 2 CPU processes over gloo, with LoRA and full
fine-tunes: the same losses as DDP, a global gradient norm, whole adapters exported, sharded
checkpoints that resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multiprocess  # every test here launches 2 processes


def _fit(tiny_model: str, pairs: str, root: Path, *extra: str, fsdp: bool = True, steps: int = 3) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    strategy = ["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml")] if fsdp else ["--trainer.strategy=ddp"]
    cmd = [sys.executable, "-m", "debate_lightning", "fit", "--config", str(ROOT / "configs" / "dpo.yaml"), *strategy,
           f"--model.init_args.policy.model={tiny_model}", "--model.init_args.optim.lr=1e-2",
           f"--data.init_args.train={pairs}", "--data.init_args.batch_size=2", "--trainer.accelerator=cpu",
           "--trainer.devices=2", f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
           "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1", *extra]
    proc = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return max((root / "dpo").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def _metrics(run: Path) -> dict[int, dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): {k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f) if r.get("loss")}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from .conftest import write_pairs

    return write_pairs(tmp_path_factory.mktemp("pairs") / "p.jsonl", n=12)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_fsdp_matches_ddp(tiny_model, pairs, tmp_path, lora):
    full = tmp_path / "full.yaml"  # a full fine-tune: no LoRA, a frozen copy as the reference
    full.write_text("model:\n  init_args:\n    policy:\n      lora: null\n    reference: copy\n")
    extra = ["--model.init_args.policy.lora.r=4"] if lora else ["--config", str(full)]
    ddp = _fit(tiny_model, pairs, tmp_path / "ddp", *extra, fsdp=False)
    fsdp = _fit(tiny_model, pairs, tmp_path / "fsdp", *extra)
    a, b = _metrics(ddp), _metrics(fsdp)
    assert sorted(a) == sorted(b) == [0, 1, 2]
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-5)
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-4)  # global, not one shard's
    assert a[2]["loss"] != a[0]["loss"]  # it trained
    # the replica check reads whole tensors; the export is whole too, and equals DDP's
    fingerprints = json.loads((fsdp / "replica_fingerprints.json").read_text())
    assert fingerprints[0] == fingerprints[1]
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    ours, theirs = load_file(fsdp / "adapter" / name), load_file(ddp / "adapter" / name)
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-4)
    # a checkpoint is a directory of both ranks' shards
    last = fsdp / "checkpoints" / "last.ckpt"
    assert last.is_dir() and {p.name for p in last.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}


def test_fsdp_resumes_from_its_sharded_checkpoint(tiny_model, pairs, tmp_path):
    whole_run = _fit(tiny_model, pairs, tmp_path / "whole", "--model.init_args.policy.lora.r=4")
    first = _fit(tiny_model, pairs, tmp_path / "part", "--model.init_args.policy.lora.r=4", steps=2)
    assert sorted(_metrics(first)) == [0, 1]
    assert (first / "checkpoints" / "last.ckpt" / ".metadata").is_file()
    rest_run = _fit(tiny_model, pairs, tmp_path / "part", "--model.init_args.policy.lora.r=4", "--ckpt_path=last")
    rest, whole = _metrics(rest_run), _metrics(whole_run)
    assert sorted(rest) == [2]  # continues at the step after the checkpoint
    assert rest[2]["loss"] == pytest.approx(whole[2]["loss"], abs=1e-6)  # the trained adapters were restored
    # and so were Adam's moments: the last update lands where the uninterrupted run's did
    ours, theirs = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (rest_run, whole_run))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config", ["online_dpo.yaml", "ppo.yaml"])
def test_online_objectives_under_fsdp(tiny_model, tmp_path, config):
    """Rollouts from a sharded policy (stock generation through the root, no_grad), its base as
    the judge, PPO's value head sharded beside it: one epoch on 2 ranks, replicas identical."""
    no_callbacks = tmp_path / "no_callbacks.yaml"
    no_callbacks.write_text("trainer:\n  callbacks: []\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "debate_lightning", "fit", "--config", str(ROOT / "configs" / config),
           "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--config", str(no_callbacks),
           f"--model.init_args.policy.model={tiny_model}", f"--data.init_args.judge.path={tiny_model}",
           "--data.init_args.rounds_per_epoch=2", "--data.init_args.sampling.max_new_tokens=4",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_epochs=1",
           f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(tmp_path.glob("*/version_0"))
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == ["epoch-0000-rank-0.jsonl", "epoch-0000-rank-1.jsonl"]
    fingerprints = json.loads((run / "replica_fingerprints.json").read_text())
    assert fingerprints[0] == fingerprints[1] and len(fingerprints[0]) == (10 if config == "ppo.yaml" else 8)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
