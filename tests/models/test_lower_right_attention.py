"""Lower-right causal attention after a KV cache against transformers' masked SDPA."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from debate_lightning.models import lower_right_attention as lra
from debate_lightning.models.hf import HFGenerator, _cache_kwarg


def _twins():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation="sdpa")
    stock = LlamaForCausalLM(config).eval()
    fast = LlamaForCausalLM(config).eval()
    fast.load_state_dict(stock.state_dict())
    return stock, fast


@pytest.mark.parametrize(("length", "total"), [(2, 3), (5, 40), (33, 100), (64, 65)])
def test_split_attention_equals_explicit_lower_right_mask(length, total):
    torch.manual_seed(length + total)
    q = torch.randn(1, 4, length, 64)
    k, v = torch.randn(1, 4, total, 64), torch.randn(1, 4, total, 64)
    mask = torch.ones(length, total, dtype=torch.bool).tril(total - length)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(lra.lower_right_causal(q, k, v), want, rtol=1e-5, atol=1e-5)


def test_marker_with_what_the_split_does_not_cover_gets_the_explicit_mask():
    """Dropout (a model in training mode under no_grad) falls back to the mask transformers
    would have built; with dropout 0 that fallback equals the split."""
    _, fast = _twins()
    attn = fast.model.layers[0].self_attn
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 11, 16), torch.randn(1, 2, 11, 16)
    split, _ = lra._attention(attn, q, k, v, lra.LOWER_RIGHT, scaling=0.25)
    mask = torch.ones(6, 11, dtype=torch.bool).tril(5)[None, None]
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    want, _ = sdpa_attention_forward(attn, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(split, want, rtol=1e-5, atol=1e-5)
    torch.manual_seed(2)
    dropped, _ = lra._attention(attn, q, k, v, lra.LOWER_RIGHT, dropout=0.5, scaling=0.25)
    torch.manual_seed(2)
    explicit, _ = sdpa_attention_forward(attn, q, k, v, mask, dropout=0.5, scaling=0.25)
    torch.testing.assert_close(dropped, explicit)


def test_cached_forward_of_one_row_takes_the_split_and_equals_a_whole_forward():
    stock, fast = _twins()
    assert lra.install(fast) and fast.config._attn_implementation == lra.NAME
    ids = torch.randint(0, 300, (1, 40))
    calls = []
    original = lra.lower_right_causal
    lra.lower_right_causal = lambda *a, **k: calls.append(a[0].shape) or original(*a, **k)
    try:
        with torch.inference_mode():
            want = stock(ids).logits[:, -1]
            prefix = getattr(fast(ids[:, :25], use_cache=True), _cache_kwarg())
            got = fast(ids[:, 25:], **{_cache_kwarg(): prefix}, attention_mask=torch.ones_like(ids),
                       position_ids=torch.arange(25, 40)[None]).logits[:, -1]
    finally:
        lra.lower_right_causal = original
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert calls == [torch.Size([1, 4, 15, 16])] * 2  # both layers split: 15 new queries, 4 heads


def test_other_calls_keep_transformers_masks():
    stock, fast = _twins()
    lra.install(fast)
    ids = torch.randint(0, 300, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # a padded batch: needs its explicit mask
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids, attention_mask=mask).logits, stock(ids, attention_mask=mask).logits)
        cache_a, cache_b = DynamicCache(), DynamicCache()
        fast(ids[:, :20], attention_mask=mask[:, :20], **{_cache_kwarg(): cache_a})
        stock(ids[:, :20], attention_mask=mask[:, :20], **{_cache_kwarg(): cache_b})
        a = fast(ids[:, 20:], attention_mask=mask, **{_cache_kwarg(): cache_a}).logits
        b = stock(ids[:, 20:], attention_mask=mask, **{_cache_kwarg(): cache_b}).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # with autograd on (training) the mask is transformers' own, and gradients match
    assert lra._mask(1, 5, 9, q_offset=4) is not lra.LOWER_RIGHT  # autograd on
    with torch.no_grad():
        assert lra._mask(1, 5, 9, q_offset=4) is lra.LOWER_RIGHT
        assert lra._mask(2, 5, 9, q_offset=4) is not lra.LOWER_RIGHT  # two rows
        assert lra._mask(1, 5, 9, q_offset=4, attention_mask=torch.tensor([[0] + [1] * 8]).bool()) is not lra.LOWER_RIGHT
    ids = ids[:1]
    for model in (stock, fast):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    for (name, a), b in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_models_on_other_attention_or_without_the_op_are_left_alone(monkeypatch):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    assert not lra.install(model) and model.config._attn_implementation == "eager"
    _, fast = _twins()
    monkeypatch.setattr(lra, "available", lambda: False)  # a torch without the CPU flash op
    assert not lra.install(fast) and fast.config._attn_implementation == "sdpa"


def test_judge_reuses_the_start_shared_with_the_previous_chat(tiny_model_dir):
    """Both orders of a debate share the system message, question and answer A: the second
    one judged runs only the rest, and the probabilities equal judging each chat whole."""
    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, score_token_budget=1)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, prefix_cache=False, score_token_budget=1)
    assert cached.model.config._attn_implementation == lra.NAME
    assert plain.model.config._attn_implementation == "sdpa"
    system = {"role": "system", "content": "You judge debates about stories you cannot read. " * 3}
    chats = []
    for i in range(3):
        question = f"Question {i}: who took the lamp to the harbour in the story? A: Mara "
        chats += [[system, {"role": "user", "content": question + f"B: Tom. Debate: {'Mara did. ' * (i + 2)}"}],
                  [system, {"role": "user", "content": question + f"B: Ilse. Debate: {'Tom did. ' * (i + 4)}"}]]
    a, b = cached.choice_logprobs(chats, ["A", "B"]), plain.choice_logprobs(chats, ["A", "B"])
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    prompts = [cached.prompt_ids(c) for c in chats]
    ordered = sorted(prompts)
    shared = sum(next(j for j, (x, y) in enumerate(zip(p, q)) if x != y) for q, p in zip(ordered, ordered[1:]))
    assert cached.stats["reused_tokens"] == shared > 5 * len(cached.prompt_ids([system]))
    assert plain.stats["reused_tokens"] == 0
