"""Every LightningCLI config in configs/ parses and trains for one step on a tiny model, writing
only under ``--trainer.default_root_dir``, with its shipped ``accelerator: auto`` and ``precision:
auto`` resolved for this CPU; typed arguments and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from debate_lightning.cli import DebateCLI, cli_main

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


def _model_specs(node, where: str = ""):
    """(where, spec) for every model spec (a mapping with a ``backend``) under ``node``."""
    if isinstance(node, dict):
        if "backend" in node:
            yield where, node
        for k, v in node.items():
            yield from _model_specs(v, f"{where}.{k}" if where else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _model_specs(v, f"{where}[{i}]")


def test_sft_and_dpo_configs_are_found():
    names = {p.name for p in lightning_configs()}
    assert {"dpo.yaml", "sft.yaml", "online_dpo.yaml", "online_dpo_consultancy.yaml", "ppo.yaml", "probe.yaml"} <= names


# This CPU has no GPU: what `accelerator: auto` and `precision: auto` must come to here.
THIS_MACHINE = (("cuda", "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
                if CUDAAccelerator.is_available() else ("cpu", "32-true"))


@pytest.mark.parametrize("config", lightning_configs(), ids=lambda p: p.name)
def test_fit_configs_ship_device_independent_settings(config, tiny_model, tmp_path, monkeypatch, capsys):
    """The shipped file says `auto` for accelerator, precision and every model's device, and the CLI
    turns it, unchanged but for the tiny model, into a CPU trainer in 32-true here."""
    doc = yaml.safe_load(config.read_text())
    assert doc["trainer"]["accelerator"] == "auto" and doc["trainer"]["precision"] == "auto"
    devices = {where: spec.get("device") for where, spec in _model_specs(doc)}
    if "device" in doc["data"]["init_args"]:  # probe.yaml's extraction model
        devices["data.init_args.device"] = doc["data"]["init_args"]["device"]
    assert all(d == "auto" for d in devices.values()), devices
    if config.name not in ("dpo.yaml", "sft.yaml", "sft_judge.yaml"):  # those load no model besides the policy
        assert devices, f"{config.name}: expected a model spec with a device"

    monkeypatch.chdir(tmp_path)
    overrides = _embedded_overrides(doc["model"], "model", tiny_model) + _embedded_overrides(doc["data"], "data", tiny_model)
    cli = DebateCLI(args=["--config", str(config), *overrides], run=False)
    accelerator, precision = THIS_MACHINE
    assert cli.trainer.precision == precision
    assert isinstance(cli.trainer.accelerator, CPUAccelerator) == (accelerator == "cpu")
    assert cli.config.trainer.precision == precision  # what config.yaml records
    assert cli.config.trainer.accelerator == "auto"   # where it runs stays portable
    assert f"trainer.precision: auto -> {precision} (accelerator {accelerator})" in capsys.readouterr().err


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
    # it ran with the shipped `auto` settings, and the record says what they came to here
    assert resolved["trainer"]["accelerator"] == "auto" and resolved["trainer"]["precision"] == THIS_MACHINE[1]


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


def test_grpo_tournament_overlay_logs_a_win_rate_curve(tiny_model, tmp_path, monkeypatch, capsys):
    """`--config grpo.yaml --config grpo_tournament.yaml` (the README's example): the win rate against
    the initial weights before training and after every epoch, read back by `curves`."""
    from debate_lightning.__main__ import main

    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load((CONFIGS / "grpo.yaml").read_text())
    overrides = _embedded_overrides(doc["model"], "model", tiny_model) + _embedded_overrides(doc["data"], "data", tiny_model)
    cli_main(["fit", "--config", "grpo.yaml", "--config", "grpo_tournament.yaml", *overrides,
              "--data.init_args.rounds_per_epoch=2", "--data.init_args.sampling.max_new_tokens=4",
              "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"])
    run = tmp_path / "outputs" / "grpo_tournament" / "grpo" / "version_0"
    capsys.readouterr()
    assert main(["curves", str(run), "--metrics", "tournament/win_rate", "tournament/rounds"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["start", "0", "1"]
    assert all(r[2] == "8.000" for r in rows)  # 4 held-out questions, both side assignments
    assert all(0 <= float(r[1]) <= 1 and (float(r[1]) * 8).is_integer() for r in rows)  # a share of 8 rounds
