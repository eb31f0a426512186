"""Every LightningCLI config in configs/ parses and trains for one step on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from debate_lightning.cli import cli_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def lightning_configs() -> list[Path]:
    """YAMLs with top-level ``model:`` and ``trainer:``; other configs (tournaments…) are not ours."""
    found = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        if isinstance(doc, dict) and "model" in doc and "trainer" in doc:
            found.append(path)
    return found


def _embedded_overrides(node, prefix: str, tiny: str) -> list[str]:
    """``--<key>=<tiny>`` for every init arg that names the embedded model."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _embedded_overrides(v, f"{prefix}.{k}", tiny)
    elif node == "embedded":
        out.append(f"--{prefix}={tiny}")
    return out


def test_sft_and_dpo_configs_are_found():
    names = {p.name for p in lightning_configs()}
    assert {"sft.yaml", "dpo.yaml"} <= names


@pytest.mark.parametrize("config", lightning_configs(), ids=lambda p: p.name)
def test_config_trains_one_step(config, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write under outputs/
    doc = yaml.safe_load(config.read_text())
    overrides = _embedded_overrides(doc.get("model", {}), "model", tiny_model)
    overrides += _embedded_overrides(doc.get("data", {}), "data", tiny_model)
    cli_main(["fit", "--config", str(config), *overrides, "--trainer.max_steps=1",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    saved = list(tmp_path.rglob("config.yaml"))
    assert saved, "the resolved config was not saved"
    run_dir = saved[0].parent
    assert (run_dir / "metrics.csv").is_file()
    if doc["model"].get("init_args", {}).get("lora", True) is not None:
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    resolved = yaml.safe_load(saved[0].read_text())
    assert resolved["trainer"]["max_steps"] == 1


def test_wrong_key_is_a_precise_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(CONFIGS / "dpo.yaml"), "--model.init_args.betta=0.5"])
    assert exit_info.value.code != 0
    assert "betta" in capsys.readouterr().err


def test_wrong_type_is_a_precise_error(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(CONFIGS / "dpo.yaml"), "--model.init_args.loss_type=kto"])
    err = capsys.readouterr().err
    assert "loss_type" in err and "kto" in err
