"""``LocalGenerator.hidden_states``: batched, left-padded, equal to a stock forward per row."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from debate_lightning.debate.agents import prompts_for
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Transcript
from debate_lightning.models.base import layer_indices
from debate_lightning.models.hf import HFGenerator

CHATS = [
    [{"role": "user", "content": "Which is bigger, a cat or a mouse?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour. " * 7}],
    [{"role": "user", "content": "Hi"}],
]


def _stock_states(path, prompts, layers) -> torch.Tensor:
    """The reference: stock transformers (no engine, no padding), one prompt at a time."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for p in prompts:
            states = model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
            rows.append(torch.stack([states[layer][0, -1] for layer in layers]))
    return torch.stack(rows)


def test_layer_indices_count_from_the_top_and_name_the_layer_count():
    assert layer_indices([-1, 0, 2, -3], num_layers=2) == [2, 0, 2, 0]
    with pytest.raises(ValueError, match="the model has 2 layers.*-3..2"):
        layer_indices([3], num_layers=2)
    with pytest.raises(ValueError, match="the model has 2 layers"):
        layer_indices([-4], num_layers=2)
    with pytest.raises(ValueError, match="at least one"):
        layer_indices([], num_layers=2)


def test_hidden_states_equal_a_stock_forward_per_unpadded_row(tiny_model_dir):
    # Batch 2 splits three prompts of different lengths into padded chunks.
    gen = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=2)
    prompts = [gen.chat_ids(c) for c in CHATS]
    layers = [-1, 0, 1, -2]
    got = gen.hidden_states(prompts, layers)
    assert got.shape == (3, 4, 32) and got.dtype == torch.float32 and got.device.type == "cpu"
    assert gen.num_layers == 2 and gen.hidden_size == 32
    want = _stock_states(tiny_model_dir, prompts, layers)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # -1 is the last state (after the final norm), the same as index num_layers; -2 as index 1.
    torch.testing.assert_close(got[:, 0], gen.hidden_states(prompts, [2])[:, 0])
    torch.testing.assert_close(got[:, 3], got[:, 2])
    with pytest.raises(ValueError, match="has 2 layers"):
        gen.hidden_states(prompts, [5])


def test_hidden_states_one_forward_per_chunk_and_no_generation(tiny_model_dir):
    gen = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=8)
    prompts = [gen.chat_ids(c) for c in CHATS]
    before = dict(gen.stats)
    gen.hidden_states(prompts, [-1, 1])
    assert gen.stats["forward_batches"] - before["forward_batches"] == 1
    assert gen.stats["generate_calls"] == before["generate_calls"]


def test_hidden_states_of_judge_chats_on_the_embedded_model(embedded_dir, questions):
    """The real model: the judge chats of a transcript in both orders, at the verdict position."""
    gen = HFGenerator(path=str(embedded_dir), dtype="float32", max_batch_size=4)
    fmt = Format(kind="debate", num_speeches=1)
    transcripts = [Transcript(question=q, format=fmt) for q in questions[:2]]
    chats = [t.judge_chat(prompts_for(fmt), swap=s) for t in transcripts for s in (False, True)]
    prompts = [gen.chat_ids(c) for c in chats]
    assert all(gen.tokenizer.decode(p[-4:]) == "<|im_start|>assistant\n" for p in prompts)
    layers = [-1, -4, -8, 0]
    got = gen.hidden_states(prompts, layers)
    assert got.shape == (4, 4, 576) and gen.num_layers == 30
    torch.testing.assert_close(got, _stock_states(embedded_dir, prompts, layers), atol=2e-3, rtol=1e-3)
