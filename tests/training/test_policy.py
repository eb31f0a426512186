"""PolicyModule: the CPU engine only where the policy runs on a CPU, and the same steps either way."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from debate_lightning import accel
from debate_lightning.training.datamodules import PreferenceDataModule
from debate_lightning.training.dpo import DPOModule
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig

LORA = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


def test_only_a_cpu_policy_and_its_frozen_copy_are_prepared(tiny_model, monkeypatch):
    prepared: list[torch.nn.Module] = []
    monkeypatch.setattr(accel, "prepare_training", prepared.append)
    module = DPOModule(PolicyConfig(tiny_model, None, save_adapter=False), reference="copy")
    # Lightning calls setup before it moves the model: the strategy's device is the one that counts
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    module.setup("fit")
    assert prepared == []  # a CUDA user's linears stay plain nn.Linear
    module._trainer.strategy.root_device = torch.device("cpu")
    module.setup("fit")
    assert prepared == [module.policy, module.reference.copy]


def test_dpo_steps_are_the_same_with_accel_on_and_off(tiny_model, pairs_file, tmp_path, monkeypatch):
    losses, kinds = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", flag)
        L.seed_everything(0)
        module = DPOModule(PolicyConfig(tiny_model, LORA, save_adapter=False), OptimConfig(lr=1e-2))
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, log_every_n_steps=1,
                            logger=L.pytorch.loggers.CSVLogger(tmp_path, name=flag, version="v"),
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, PreferenceDataModule(train=pairs_file, batch_size=2, shuffle=False))
        q_proj = module.policy.base_model.model.model.layers[0].self_attn.q_proj
        kinds[flag] = (type(q_proj.base_layer).__name__, type(q_proj.lora_A["default"]).__name__)
        with open(tmp_path / flag / "v" / "metrics.csv") as f:
            losses[flag] = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert kinds["0"] == ("Linear", "Linear")
    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "1")
    packed = "PackedLinear" if accel.enabled("cpu") else "Linear"  # off where its self-check fails
    assert kinds["1"] == (packed, packed)  # LoRA's own matrices too: they use F.linear while trained
    assert len(losses["0"]) == 3 and losses["1"] == pytest.approx(losses["0"], abs=1e-5)
    assert losses["0"][-1] < losses["0"][0]
