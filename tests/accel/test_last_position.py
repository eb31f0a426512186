"""The last layer at the last position only, against stock forwards."""

import copy

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from debate_lightning.accel import lower_right_attention
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.kv import cache_kwarg as _cache_kwarg
from debate_lightning.accel.last_position import last_position_only, trim_last_layer
from debate_lightning.models.base import SamplingParams


def _twins(**extra):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation="sdpa", **extra)
    stock = LlamaForCausalLM(config).eval()
    trimmed = LlamaForCausalLM(copy.deepcopy(config)).eval()  # its own config: install() changes it
    trimmed.load_state_dict(stock.state_dict())
    assert trim_last_layer(trimmed) and trim_last_layer(trimmed)  # idempotent
    return stock, trimmed


def _last_layer_lengths(model):
    lengths = []
    model.model.layers[-1].register_forward_hook(lambda module, args, out: lengths.append(out.shape[1]))
    return lengths


def test_last_position_logits_and_every_layers_kv_equal_stock():
    stock, trimmed = _twins()
    lengths = _last_layer_lengths(trimmed)
    ids = torch.randint(0, 300, (3, 21))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :11] = 0  # left padding: an explicit mask, whose last row the trimmed layer keeps
    with torch.inference_mode():
        want = stock(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        with last_position_only(trimmed):
            got = trimmed(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(getattr(got, _cache_kwarg()).layers, getattr(want, _cache_kwarg()).layers):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
    assert lengths == [1]


def test_after_a_cache_padded_or_lower_right_and_outside_the_context_it_is_stock():
    stock, trimmed = _twins()
    lower_right_attention.install(trimmed)
    lengths = _last_layer_lengths(trimmed)
    ids = torch.randint(0, 300, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    for rows in (slice(0, 1), slice(0, 2)):  # one unpadded row (lower-right marker), a padded batch
        with torch.inference_mode():
            caches = []
            for model in (stock, trimmed):
                cache = DynamicCache()
                model(ids[rows, :18], attention_mask=mask[rows, :18], **{_cache_kwarg(): cache})
                caches.append(cache)
            want = stock(ids[rows, 18:], attention_mask=mask[rows], logits_to_keep=1, **{_cache_kwarg(): caches[0]}).logits
            with last_position_only(trimmed):
                got = trimmed(ids[rows, 18:], attention_mask=mask[rows], logits_to_keep=1, **{_cache_kwarg(): caches[1]}).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert lengths == [18, 1, 18, 1]  # the prefix forwards ran outside the context: whole
    with last_position_only(trimmed):  # with autograd on (training) the stock forward runs
        loss = trimmed(ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    assert lengths[-1] == 30 and trimmed.model.layers[-1].mlp.down_proj.weight.grad is not None


def test_other_models_are_not_trimmed():
    torch.manual_seed(0)
    eager = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, attn_implementation="eager"))
    assert not trim_last_layer(eager)
    assert not trim_last_layer(torch.nn.Linear(2, 2))


def test_generator_outputs_equal_with_and_without_trimming(tiny_model_dir):
    fast = HFGenerator(path=str(tiny_model_dir), dtype="float32")
    stock = HFGenerator(path=str(tiny_model_dir), dtype="float32", fused_modules=False, packed_linear=False)
    assert type(fast.model.model.layers[-1]).__name__.startswith("LastPosition")
    assert not type(stock.model.model.layers[-1]).__name__.startswith("LastPosition")
    system = {"role": "system", "content": "A story about a lamp and a harbour. " * 4}
    chats = [[system, {"role": "user", "content": f"Argue for answer {x}." * (i + 1)}] for i, x in enumerate("ABC")]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    assert [g.token_ids for g in fast.generate(chats, greedy)] == [g.token_ids for g in stock.generate(chats, greedy)]
    torch.testing.assert_close(torch.tensor(fast.choice_logprobs(chats, ["A", "B"])),
                               torch.tensor(stock.choice_logprobs(chats, ["A", "B"])), atol=1e-4, rtol=0)
