"""The engine changes speed, not results: a tournament, a DPO step and ``serve`` agree with it on
and off (to the tolerance its kernels are tested at), and the door turns it off as documented."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
import torch

from debate_lightning import accel
from debate_lightning.models.base import SamplingParams
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.spec import ModelSpec

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def _tournament(tmp_path, name: str, accel_option: bool) -> list[dict]:
    from debate_lightning.tournament.cli import tournament_main

    out = tmp_path / name
    models = {"embedded": {"backend": "hf", "path": "embedded", "dtype": "float32", "options": {"accel": accel_option}}}
    argv = ["--config", str(REPO_CONFIGS / "tournament.yaml"), "--output", str(out), "--data.limit", "1",
            "--models", json.dumps(models),
            "--debaters", '[{"name": "smollm2", "model": "embedded", "max_new_tokens": 24, "temperature": 0.0}]',
            "--progress", "false", "--report", "false"]
    assert tournament_main(argv) == 0
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_tournament_is_the_same_with_the_engine_on_and_off(tmp_path):
    on, off = _tournament(tmp_path, "on", True), _tournament(tmp_path, "off", False)
    assert len(on) == len(off) == 2
    for a, b in zip(sorted(on, key=lambda r: r["round_id"]), sorted(off, key=lambda r: r["round_id"])):
        assert [s["text"] for s in a["speeches"]] == [s["text"] for s in b["speeches"]]  # greedy: the same words
        assert a["p_a"] == pytest.approx(b["p_a"], abs=1e-3)


def _dpo_step(tiny_model_dir, tmp_path, monkeypatch, switch: str) -> tuple[float, dict[str, torch.Tensor], bool]:
    import lightning as L

    from debate_lightning.training.datamodules import PreferenceDataModule
    from debate_lightning.training.dpo import DPOModule
    from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig

    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", switch)
    torch.manual_seed(0)
    module = DPOModule(PolicyConfig(str(tiny_model_dir), LoraSpec(r=4, alpha=8), save_adapter=False), OptimConfig(lr=1e-2))
    for n, p in module.policy.named_parameters():
        if "lora_B" in n:  # B starts at zero; make the adapters matter
            p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        default_root_dir=tmp_path / switch)
    trainer.fit(module, PreferenceDataModule(train="synthetic:4", batch_size=4, shuffle=False))
    packed = any(type(m).__name__ == "PackedLinear" for m in module.policy.modules())
    trained = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    return losses[0], trained, packed


def test_a_dpo_step_is_the_same_with_the_engine_on_and_off(tiny_model_dir, tmp_path, monkeypatch):
    loss_on, weights_on, packed_on = _dpo_step(tiny_model_dir, tmp_path, monkeypatch, "1")
    loss_off, weights_off, packed_off = _dpo_step(tiny_model_dir, tmp_path, monkeypatch, "0")
    assert packed_on == accel.packed_linear_available() and not packed_off  # the on run did use the engine
    assert loss_on == pytest.approx(loss_off, abs=1e-5)
    for name in weights_on:
        torch.testing.assert_close(weights_on[name], weights_off[name], atol=1e-5, rtol=1e-4)


def _serve(generator, body: dict) -> dict:
    from debate_lightning.serve import make_server

    server = make_server(generator, model_name="m").start()
    try:
        request = urllib.request.Request(f"{server.url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    finally:
        server.close()


def test_serve_answers_the_same_with_the_engine_on_and_off(tiny_model_dir):
    on = HFGenerator(path=str(tiny_model_dir), dtype="float32", accel=True)
    off = HFGenerator(path=str(tiny_model_dir), dtype="float32", accel=False)
    assert on.accel and on.lean_decode and not off.accel and not off.lean_decode
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    for body in ({"messages": messages, "max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 3},
                 {"messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 2}):
        a, b = _serve(on, body), _serve(off, body)
        assert a["choices"][0]["message"] == b["choices"][0]["message"]
        lp_a, lp_b = a["choices"][0]["logprobs"]["content"], b["choices"][0]["logprobs"]["content"]
        assert [e["token"] for e in lp_a] == [e["token"] for e in lp_b] and lp_a
        assert [e["logprob"] for e in lp_a] == pytest.approx([e["logprob"] for e in lp_b], abs=1e-4)


def test_only_cpu_devices_and_only_when_not_switched_off(monkeypatch, caplog):
    assert accel.reason_off("cpu") is None  # this machine passes the self-check
    for device in ("cuda", "mps", "meta"):
        assert not accel.enabled(device) and device in accel.reason_off(device)
    assert not accel.enabled("cpu", requested=False)  # a model's `accel: false`
    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "0")
    with caplog.at_level(logging.INFO, logger="debate_lightning.accel"):
        assert not accel.enabled("cpu")
    assert "DEBATE_LIGHTNING_ACCEL" in accel.reason_off("cpu")


def test_a_failed_self_check_turns_the_engine_off_with_one_logged_reason(monkeypatch, caplog):
    from debate_lightning.accel import probe

    monkeypatch.setattr(probe, "_check", lambda: (_ for _ in ()).throw(ImportError("registry moved")))
    probe.self_check.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="debate_lightning.accel"):
            assert not accel.enabled("cpu") and not accel.enabled("cpu")
        reasons = [r.getMessage() for r in caplog.records if "registry moved" in r.getMessage()]
        assert len(reasons) == 1  # logged once, never raised
    finally:
        probe.self_check.cache_clear()


def test_the_self_check_catches_an_engine_that_disagrees_with_transformers(monkeypatch):
    from debate_lightning.accel import last_position, probe

    # an engine piece broken by a new release: the trimmed last layer forgets the rotary embedding
    monkeypatch.setattr(last_position, "_rotate", lambda x, cos, sin: x)
    reason = probe._check()
    assert reason is not None and "differs from stock transformers" in reason


def test_an_unknown_hf_option_fails_when_the_config_loads():
    with pytest.raises(ValueError, match=r"unknown hf option\(s\) \['lean_decod'\]"):
        ModelSpec(backend="hf", path="embedded", options={"lean_decod": False})
    ModelSpec(backend="openai", model="gpt", options={"timeout": 5})  # API options are the API backends' own


def test_the_whole_sampling_path_is_stock_when_off(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "0")
    gen = HFGenerator(path=str(tiny_model_dir), dtype="float32")
    assert not gen.accel and not gen.lean_decode
    kinds = {type(m).__name__ for m in gen.model.modules()}
    assert not any(k.startswith(("Packed", "Native", "LastPosition")) for k in kinds)
    assert gen.model.config._attn_implementation == "sdpa"
    out = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert out[0].num_tokens <= 4
