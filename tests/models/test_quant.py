"""4-bit NF4 (bitsandbytes): one loader for policies, judges and debaters; a clear error on CPU.

The quantized load itself needs CUDA, which this machine lacks: what runs here is the
configuration (NF4, compute dtype, each rank's GPU) and the refusals on CPU, through the real
policy builder, the real tournament CLI and the real fit CLI."""

from __future__ import annotations

import pytest
import torch

from debate_lightning.models.loading import local_cuda_device, nf4_config
from debate_lightning.models.spec import HFOptions


def test_nf4_config_is_qlora_with_the_compute_dtype():
    config = nf4_config("bfloat16")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_use_double_quant


def test_each_rank_quantizes_onto_its_own_gpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert local_cuda_device() == "cuda:0"
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert local_cuda_device() == "cuda:3"
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher sets it; it wins
    assert local_cuda_device() == "cuda:1"


def test_policy_in_4bit_on_cpu_is_a_clear_error(tiny_model_dir):
    from debate_lightning.training.policy import build_policy

    with pytest.raises(ValueError, match=f"model {tiny_model_dir}: load_in_4bit needs a CUDA GPU.*no GPU is visible"):
        build_policy(str(tiny_model_dir), load_in_4bit=True)


def test_tournament_model_in_4bit_on_cpu_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    import yaml

    from debate_lightning.tournament.cli import tournament_main

    assert HFOptions.parse({"load_in_4bit": True}).load_in_4bit
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "limit": 1},
        "models": {"big": {"backend": "hf", "path": str(tiny_model_dir), "device": "cpu",
                           "options": {"load_in_4bit": True}}},
        "debaters": [{"name": "a", "model": "big"}], "judge": {"model": "big"},
        "formats": [{"kind": "debate", "num_speeches": 1}], "schedule": {"kind": "self_play"}}))
    assert tournament_main(["--config", str(cfg), "--output", str(tmp_path / "out"), "--progress", "false"]) == 2
    assert "load_in_4bit needs a CUDA GPU" in capsys.readouterr().err


def test_fit_with_a_4bit_policy_on_cpu_fails_before_training(tiny_model_dir, tmp_path, capsys):
    from debate_lightning.cli import cli_main

    with pytest.raises(ValueError, match="load_in_4bit needs a CUDA GPU"):
        cli_main(["fit", "--config", "online_dpo.yaml", f"--model.init_args.policy.model={tiny_model_dir}",
                  "--model.init_args.policy.load_in_4bit=true", f"--trainer.default_root_dir={tmp_path}"])
