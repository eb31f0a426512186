"""Every LightningCLI config in configs/ parses and trains for one step on a tiny model, writing
only under ``--trainer.default_root_dir``; typed arguments and precise errors."""

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
def test_config_trains_one_step_under_default_root_dir(config, tiny_model, tmp_path, monkeypatch):
    """One step of every fit config; all it writes lands under ``--trainer.default_root_dir``."""
    cwd, root = tmp_path / "cwd", tmp_path / "root"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the configs' own default_root_dir (outputs/<job>) would land here
    doc = yaml.safe_load(config.read_text())
    overrides = _embedded_overrides(doc.get("model", {}), "model", tiny_model)
    overrides += _embedded_overrides(doc.get("data", {}), "data", tiny_model)
    cli_main(["fit", "--config", str(config), *overrides, f"--trainer.default_root_dir={root}",
              "--trainer.max_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    assert sorted(cwd.rglob("*")) == [], f"{config.name} wrote outside default_root_dir"
    saved = [p for p in root.rglob("config.yaml") if (p.parent / "metrics.csv").is_file()]  # probe_data/ holds a tournament's
    assert len(saved) == 1, "the resolved config was not saved (once) under default_root_dir"
    run_dir = saved[0].parent
    assert (run_dir / "metrics.csv").is_file()
    assert list((run_dir / "checkpoints").glob("*.ckpt")), "no checkpoint beside the logs"
    policy = doc["model"]["init_args"].get("policy")  # probe.yaml trains no policy
    if policy is not None and policy.get("lora", True) is not None:
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    resolved = yaml.safe_load(saved[0].read_text())
    assert resolved["trainer"]["max_steps"] == 1


def test_print_config_shows_every_policy_and_optim_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(CONFIGS / "dpo.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    init = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert set(init["policy"]) == {"model", "lora", "adapter", "dtype", "gradient_checkpointing", "load_in_4bit",
                                   "save_adapter"}
    assert set(init["policy"]["lora"]) == {"r", "alpha", "dropout", "target_modules"}
    assert init["optim"] == {"lr": 5e-5, "weight_decay": 0.0, "warmup_steps": 0, "scheduler": "constant"}
    assert {"reference", "beta", "loss_type", "label_smoothing", "sft_weight"} <= set(init)


@pytest.mark.parametrize("key", ["betta", "policy.lorra", "optim.learning_rate"])
def test_wrong_key_is_a_precise_error(key, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(CONFIGS / "dpo.yaml"), f"--model.init_args.{key}=0.5"])
    assert exit_info.value.code != 0
    assert key in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("loss_type", "kto"), ("optim.scheduler", "step")])
def test_wrong_type_is_a_precise_error(key, value, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(CONFIGS / "dpo.yaml"), f"--model.init_args.{key}={value}"])
    err = capsys.readouterr().err
    assert key in err and value in err
