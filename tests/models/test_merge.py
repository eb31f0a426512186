"""``merge-adapter``: a LoRA adapter folded into the tiny model gives the PeftModel's logits and
scores, loads as a plain checkpoint through the registry, and every bad input is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from debate_lightning.__main__ import main
from debate_lightning.models.merge import PROVENANCE, MergeError, merge_adapter, same_base

CHATS = [[{"role": "user", "content": "Which is right, A or B?"}], [{"role": "user", "content": "Say hello."}]]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with random B matrices (a fresh LoRA is a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("lora")
    model.save_pretrained(path, safe_serialization=True)
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    return path


def test_merged_checkpoint_equals_the_adapter(tiny_model_dir, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from debate_lightning.models.hf import HFGenerator
    from debate_lightning.models.registry import ModelSpec, build_generator

    out = tmp_path / "merged"
    assert main(["merge-adapter", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir),
                 "--output", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert not list(out.glob("adapter_*")) and json.loads((out / PROVENANCE).read_text())["adapter_base"] == str(tiny_model_dir)

    ids = torch.randint(5, 1000, (2, 23), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = peft_model(ids).logits, merged(ids).logits
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            without = plain(ids).logits
    assert (want - without).abs().max() > 1e-2  # the adapter changes the model, so equality means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # a tournament's `models: {x: {backend: hf, path: OUT}}` loads it; it scores as base + adapter does
    spec = ModelSpec(backend="hf", path=str(out), dtype="float32", device="cpu")
    loaded = build_generator(spec, "merged")
    reference = HFGenerator(path=str(tiny_model_dir), adapter=str(adapter_dir), dtype="float32", name="lora")
    continuations = [" A", " Hello there."]
    assert loaded.score(CHATS, continuations) == pytest.approx(reference.score(CHATS, continuations), abs=1e-4)
    assert loaded.chat_ids(CHATS[0]) == reference.chat_ids(CHATS[0])  # the tokenizer and template came along


def test_bad_inputs_are_refused_by_name(tiny_model_dir, adapter_dir, tmp_path, tmp_path_factory, capsys):
    with pytest.raises(MergeError, match=r"--adapter .*nowhere: no such directory"):
        merge_adapter(str(tiny_model_dir), tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(MergeError, match="not a PEFT adapter directory"):
        merge_adapter(str(tiny_model_dir), tiny_model_dir, tmp_path / "out")
    other = tmp_path_factory.mktemp("other-base")
    with pytest.raises(MergeError, match=rf"made for base model '{tiny_model_dir}'.*not for --model '{other}'"):
        merge_adapter(str(other), adapter_dir, tmp_path / "out")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("results")
    assert main(["merge-adapter", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir),
                 "--output", str(full)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (full / "keep.txt").read_text() == "results"
    with pytest.raises(MergeError, match="would overwrite --adapter"):
        merge_adapter(str(tiny_model_dir), adapter_dir, adapter_dir, force=True)
    assert (adapter_dir / "adapter_config.json").is_file()
    # --force replaces the directory as a whole: no file of the old one is left to confuse a loader
    assert merge_adapter(str(tiny_model_dir), adapter_dir, full, force=True) == full
    assert not (full / "keep.txt").exists() and (full / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".full.")]  # no temporary left behind


def test_the_embedded_model_is_known_by_every_name(embedded_dir):
    assert same_base(str(embedded_dir), "embedded")
    assert same_base("/home/someone/.cache/debate_lightning/smollm2-135m-instruct", "embedded")  # another machine
    assert same_base("embedded", str(embedded_dir))
    assert not same_base("HuggingFaceTB/SmolLM2-360M-Instruct", "embedded")
    assert not same_base("/models/llama", "embedded")
