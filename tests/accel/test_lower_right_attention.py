"""Inference-time causal attention (native kernel, flash split) against transformers' masked SDPA."""

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from debate_lightning.accel import lower_right_attention as lra
from debate_lightning.accel import native
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.kv import cache_kwarg as _cache_kwarg


def _twins():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation="sdpa")
    stock = LlamaForCausalLM(config).eval()
    fast = LlamaForCausalLM(copy.deepcopy(config)).eval()  # its own config: install() changes it
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


def test_marker_with_what_the_fast_paths_do_not_cover_gets_the_explicit_mask():
    """Dropout (a model in training mode under no_grad) and dtypes the kernel does not take fall
    back to the mask transformers would have built; with dropout 0 the fast paths equal it."""
    _, fast = _twins()
    attn = fast.model.layers[0].self_attn
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 11, 16), torch.randn(2, 2, 11, 16)
    keys = torch.ones(2, 11, dtype=torch.bool)
    keys[1, :3] = False
    for marker, rows in ((lra.LowerRight(), 1), (lra.LowerRight(keys), 2)):
        mask = marker.explicit(6, 11)
        assert mask.shape == (rows if marker.keys is not None else 1, 1, 6, 11)
        want, _ = sdpa_attention_forward(attn, q[:rows], k[:rows], v[:rows], mask, scaling=0.25)
        fast_out, _ = lra._attention(attn, q[:rows], k[:rows], v[:rows], marker, scaling=0.25)
        torch.testing.assert_close(fast_out, want, rtol=1e-5, atol=1e-5)
        wide, _ = lra._attention(attn, q[:rows].double(), k[:rows].double(), v[:rows].double(), marker, scaling=0.25)
        torch.testing.assert_close(wide.float(), want, rtol=1e-5, atol=1e-5)
        torch.manual_seed(2)
        dropped, _ = lra._attention(attn, q[:rows], k[:rows], v[:rows], marker, dropout=0.5, scaling=0.25)
        torch.manual_seed(2)
        explicit, _ = sdpa_attention_forward(attn, q[:rows], k[:rows], v[:rows], mask, dropout=0.5, scaling=0.25)
        torch.testing.assert_close(dropped, explicit)


def _spy(monkeypatch, path):
    """Record the query shapes of the fast path's calls: the native kernel, or (kernels off)
    the flash split."""
    calls = []
    if path == "native":
        original = native.causal_attention
        monkeypatch.setattr(native, "causal_attention", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    else:
        monkeypatch.setattr(lra, "_native", lambda: False)
        original = lra.lower_right_causal
        monkeypatch.setattr(lra, "lower_right_causal", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    return calls


@pytest.mark.parametrize("path", ["native", "flash"])
def test_cached_forward_of_one_row_takes_the_fast_path_and_equals_a_whole_forward(monkeypatch, path):
    if path == "native" and native.library() is None:
        assert not lra._native()  # where the kernels cannot build, the flash split is the path
        return
    stock, fast = _twins()
    assert lra.install(fast) and fast.config._attn_implementation == lra.NAME
    ids = torch.randint(0, 300, (1, 40))
    calls = _spy(monkeypatch, path)
    with torch.inference_mode():
        want = stock(ids).logits[:, -1]
        prefix = getattr(fast(ids[:, :25], use_cache=True), _cache_kwarg())
        fresh = len(calls)
        got = fast(ids[:, 25:], **{_cache_kwarg(): prefix}, attention_mask=torch.ones_like(ids),
                   position_ids=torch.arange(25, 40)[None]).logits[:, -1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # both layers, 15 new queries of 4 heads (the fresh prefix is the kernel's too, not the split's)
    assert calls[fresh:] == [torch.Size([1, 4, 15, 16])] * 2
    assert fresh == (2 if path == "native" else 0)


@pytest.mark.parametrize("path", ["native", "flash"])
def test_padded_and_cached_padded_batches_equal_transformers_masks(monkeypatch, path):
    """Padded batches go through the kernel with their key mask (without kernels: transformers'
    explicit mask); logits at every real position equal the stock model's."""
    if path == "native" and native.library() is None:
        return test_padded_and_cached_padded_batches_equal_transformers_masks(monkeypatch, "flash")
    stock, fast = _twins()
    lra.install(fast)
    calls = _spy(monkeypatch, path)
    ids = torch.randint(0, 300, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding
    mask[1, 12:15] = 0  # a gap inside the row (a prefix padded to the longest, then the suffix)
    real = mask.bool()
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids, attention_mask=mask).logits[real], stock(ids, attention_mask=mask).logits[real],
                                   rtol=1e-4, atol=1e-4)
        cache_a, cache_b = DynamicCache(), DynamicCache()
        fast(ids[:, :20], attention_mask=mask[:, :20], **{_cache_kwarg(): cache_a})
        stock(ids[:, :20], attention_mask=mask[:, :20], **{_cache_kwarg(): cache_b})
        a = fast(ids[:, 20:], attention_mask=mask, **{_cache_kwarg(): cache_a}).logits
        b = stock(ids[:, 20:], attention_mask=mask, **{_cache_kwarg(): cache_b}).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert len(calls) == (6 if path == "native" else 0)  # 2 layers x 3 forwards; the split takes no batch


def test_marker_only_without_autograd_and_gradients_stay_stock(monkeypatch):
    stock, fast = _twins()
    lra.install(fast)
    padded = torch.tensor([[0] + [1] * 8, [1] * 9]).bool()
    assert not isinstance(lra._mask(1, 5, 9, q_offset=4), lra.LowerRight)  # autograd on
    with torch.no_grad():
        assert lra._mask(1, 5, 9, q_offset=4).keys is None
        assert not isinstance(lra._mask(1, 5, 9, q_offset=3), lra.LowerRight)  # queries not the last positions
        assert not isinstance(lra._mask(1, 5, 9, q_offset=4, local_size=3), lra.LowerRight)  # sliding window
        if lra._native():
            assert lra._mask(1, 9, 9).keys is None  # a fresh prefill
            assert torch.equal(lra._mask(2, 5, 9, q_offset=4, attention_mask=padded).keys, padded)
        monkeypatch.setattr(lra, "_native", lambda: False)
        assert lra._mask(1, 5, 9, q_offset=4).keys is None  # the split: one unpadded row after a cache
        assert not isinstance(lra._mask(1, 9, 9), lra.LowerRight)  # no cache: SDPA's own causal
        assert not isinstance(lra._mask(2, 5, 9, q_offset=4), lra.LowerRight)  # two rows
        assert not isinstance(lra._mask(2, 5, 9, q_offset=4, attention_mask=padded), lra.LowerRight)
    ids = torch.randint(0, 300, (1, 30))
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
    monkeypatch.setattr(lra, "_native", lambda: False)  # and no native kernels
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
    prompts = [cached.chat_ids(c) for c in chats]
    ordered = sorted(prompts)
    shared = sum(next(j for j, (x, y) in enumerate(zip(p, q)) if x != y) for q, p in zip(ordered, ordered[1:]))
    assert cached.stats["reused_tokens"] == shared > 5 * len(cached.chat_ids([system]))
    assert plain.stats["reused_tokens"] == 0
