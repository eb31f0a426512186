"""`repetition_penalty` in SamplingParams: the hf backend applies it with stock `generate` (also
when the CPU engine is on, whose sampler has no penalty), vLLM-style servers receive it, and the
Anthropic API, which has none, refuses it by name."""

from __future__ import annotations

import pytest
import torch

from debate_lightning.models.api import AnthropicGenerator, OpenAICompatibleGenerator
from debate_lightning.models.base import SamplingParams

CHATS = [[{"role": "user", "content": "Repeat after me: the the the the the"}],
         [{"role": "user", "content": "Count: one two three"}]]


def stock_greedy(generator, chat, n: int, penalty: float) -> list[int]:
    """transformers' own greedy generate with its own repetition penalty, one unpadded prompt."""
    ids = torch.tensor([generator.chat_ids(chat)])
    with torch.no_grad():
        out = generator.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                                       repetition_penalty=penalty, pad_token_id=generator.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_hf_applies_the_penalty_as_stock_generate_does(tiny_generator):
    n = 12
    plain = SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0.0)
    penalised = SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0.0, repetition_penalty=3.0)
    without = [g.token_ids for g in tiny_generator.generate(CHATS, plain)]
    with_penalty = [g.token_ids for g in tiny_generator.generate(CHATS, penalised)]
    # the random tiny model repeats itself; the penalty changes what it writes
    assert without != with_penalty
    for chat, got in zip(CHATS, with_penalty):
        assert got == stock_greedy(tiny_generator, chat, n, 3.0)[: len(got)]
    # a penalised call leaves the engine's path as it was: the unpenalised output is unchanged
    assert [g.token_ids for g in tiny_generator.generate(CHATS, plain)] == without


def test_a_penalty_must_be_positive():
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        SamplingParams(repetition_penalty=0.0)


def test_api_backends_send_or_refuse_it(monkeypatch):
    server = OpenAICompatibleGenerator(model="m", base_url="http://127.0.0.1:9/v1")
    chat = CHATS[0]
    assert "repetition_penalty" not in server._body(chat, SamplingParams()).get("extra_body", {})
    assert server._body(chat, SamplingParams(repetition_penalty=1.2))["extra_body"] == {"repetition_penalty": 1.2}

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    claude = AnthropicGenerator("claude-x", base_url="http://127.0.0.1:9", max_retries=3, backoff_base=0.01)
    [g] = claude.generate([chat], SamplingParams(repetition_penalty=1.2))
    assert g.text == "" and "has no repetition_penalty" in g.error and g.usage["attempts"] == 1  # not retried
