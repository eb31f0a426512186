"""The lean decode loop against transformers' own ``generate`` and ``forward``."""

import pytest
import torch

from debate_lightning.accel import native
from debate_lightning.models.base import SamplingParams
from debate_lightning.accel.decode import FastDecoder, Sampler, _Layout
from debate_lightning.models.hf import HFGenerator

SYSTEM = "You judge debates about stories. " * 6
CHATS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Which is bigger, a cat or a mouse?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour. " * 7}],
    [{"role": "user", "content": "Hi"}],
]


def _twins(model, tokenizer, **kwargs):
    """The same weights behind the lean loop and behind ``generate``."""
    lean = HFGenerator(model=model, tokenizer=tokenizer, **kwargs)
    hf = HFGenerator(model=model, tokenizer=tokenizer, lean_decode=False, **kwargs)
    assert lean.lean_decode and not hf.lean_decode
    return lean, hf


def _assert_same(lean_gens, hf_gens):
    for a, b in zip(lean_gens, hf_gens):
        assert a.token_ids == b.token_ids
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.finished == b.finished


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_greedy_equals_generate_with_padding(tiny_generator, prefix_cache):
    lean, hf = _twins(tiny_generator.model, tiny_generator.tokenizer, prefix_cache=prefix_cache, max_batch_size=8)
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=0.0, logprobs=True)
    _assert_same(lean.generate(CHATS, params), hf.generate(CHATS, params))
    # Rows whose shared system prompt comes from the prefix cache (the story, in debates).
    _assert_same(lean.generate(CHATS[:2], params), hf.generate(CHATS[:2], params))
    if prefix_cache:
        assert lean.stats["prefix_hits"] > 0


def _step_logits_against_forward(gen, decoder):
    """Teacher-force one continuation through the loop's step and through forward()."""
    model = gen.model
    prompts = [gen.chat_ids(c) for c in CHATS]
    ids, mask = gen._pad(prompts)
    follow = torch.randint(100, 1000, (len(prompts), 5))
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        layers = out.past_key_values.layers if hasattr(out, "past_key_values") else out.cache.layers
        width = ids.shape[1]
        keys = [torch.cat([layer.keys, layer.keys.new_zeros(*layer.keys.shape[:2], 5, layer.keys.shape[3])], 2) for layer in layers]
        values = [torch.cat([layer.values, layer.values.new_zeros(*layer.values.shape[:2], 5, layer.values.shape[3])], 2) for layer in layers]
        attend = decoder._attention(_Layout.plain(mask), [None] * len(keys), width + 5, torch.float32)
        native_used = isinstance(attend, native.DecodeAttention)
        positions = mask.sum(-1)
        stepped = []
        for j in range(5):
            stepped.append(decoder._step(follow[:, j], positions + j, keys, values, width + j, attend))
        full_ids = torch.cat([ids, follow], 1)
        full_mask = torch.cat([mask, torch.ones_like(follow)], 1)
        reference = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits[:, width:]
    torch.testing.assert_close(torch.stack(stepped, 1), reference.float(), rtol=1e-4, atol=1e-4)
    return native_used


def test_step_logits_equal_forward(tiny_generator):
    # 8-wide heads: the native kernel does not take them, torch ops run
    assert not _step_logits_against_forward(tiny_generator, FastDecoder(tiny_generator.model))


def test_sampler_processing_equals_transformers_warpers():
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    eos = torch.tensor([7, 9])
    sampler = Sampler(temperature=0.7, top_k=20, top_p=0.8, min_new_tokens=3)
    ours = sampler.process(logits, step=1, eos=eos)
    input_ids = torch.zeros(4, 11, dtype=torch.long)  # prompt of 10 + 1 generated token
    ref = MinNewTokensLengthLogitsProcessor(10, 3, [7, 9])(input_ids, logits.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        ref = warper(input_ids, ref)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(ours[finite], ref[finite])
    assert torch.isinf(ours[:, eos]).all()
    # Past the minimum length EOS is allowed again; the kept set is never empty.
    late = sampler.process(logits, step=5, eos=eos)
    assert torch.isfinite(late).any(-1).all()


def test_sampling_distribution_follows_processed_logits():
    torch.manual_seed(1)
    # zero-probability tokens first, in the middle and last (masked by top-k/top-p or min length)
    probs = torch.tensor([[0.0, 0.6, 0.0, 0.3, 0.1, 0.0]]).repeat(20000, 1)
    sampler = Sampler(temperature=1.0)
    draws = sampler.choose(sampler.process(probs.log(), step=0, eos=torch.tensor([5])))
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert freq[[0, 2, 5]].sum() == 0
    # temperature sharpens the same distribution
    cold = Sampler(temperature=0.5).process(probs.log(), step=0, eos=torch.tensor([5]))
    freq = torch.bincount(Sampler(temperature=0.5).choose(cold), minlength=6).float() / len(draws)
    torch.testing.assert_close(freq, probs[0] ** 2 / (probs[0] ** 2).sum(), atol=0.01, rtol=0)


@pytest.fixture(scope="module")
def embedded(embedded_dir):
    return HFGenerator(path=str(embedded_dir), dtype="float32")


def test_eos_stops_rows_and_min_length_holds(embedded):
    """Make a token row 0 greedily writes early an end token: row 0 stops there, the others go on,
    and a minimum length keeps it going, exactly as generate() does (the real model: a random tiny
    one repeats one token)."""
    lean, hf = _twins(embedded.model, embedded.tokenizer)
    free = lean.generate(CHATS, SamplingParams(max_new_tokens=8, min_new_tokens=8, temperature=0.0))
    others = set(free[1].token_ids) | set(free[2].token_ids)
    at = next(j for j, t in enumerate(free[0].token_ids) if j >= 1 and t not in others and t not in free[0].token_ids[:j])
    stop = free[0].token_ids[at]
    for gen in (lean, hf):
        gen.eos_ids = [stop]
    short = SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=True)
    got = lean.generate(CHATS, short)
    _assert_same(got, hf.generate(CHATS, short))
    assert got[0].num_tokens == at and got[0].finished
    assert [g.num_tokens for g in got[1:]] == [8, 8]
    held = SamplingParams(max_new_tokens=8, min_new_tokens=at + 1, temperature=0.0, logprobs=True)
    got = lean.generate(CHATS, held)
    _assert_same(got, hf.generate(CHATS, held))
    assert got[0].num_tokens > at


def test_lora_adapters_are_merged_into_the_loop(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter, not the zero init
    lean, hf = _twins(peft_model, tokenizer)
    params = SamplingParams(max_new_tokens=10, min_new_tokens=10, temperature=0.0, logprobs=True)
    with_adapter = lean.generate(CHATS, params)
    _assert_same(with_adapter, hf.generate(CHATS, params))
    with peft_model.disable_adapter():
        lean._decoder = None
        without = lean.generate(CHATS, params)
        _assert_same(without, hf.generate(CHATS, params))
    assert [g.token_ids for g in with_adapter] != [g.token_ids for g in without]


def test_unsupported_architecture_falls_back_to_generate(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=512))
    assert "gpt2" in FastDecoder.unsupported(model)
    with pytest.raises(ValueError, match="gpt2"):
        FastDecoder(model)
    gen = HFGenerator(model=model, tokenizer=tokenizer)
    assert not gen.lean_decode
    out = gen.generate(CHATS[2:], SamplingParams(max_new_tokens=4, min_new_tokens=4, temperature=0.0))
    assert out[0].num_tokens == 4


def test_embedded_model_greedy_matches_generate(embedded):
    """The real SmolLM2 weights, a real debate-sized prompt: the same greedy speech both ways."""
    from debate_lightning.data.synthetic import generate

    q = generate(1, seed=3)[0]
    chats = [
        [{"role": "system", "content": q.story}, {"role": "user", "content": f"{q.question} Argue for: {pos}"}]
        for pos in q.positions
    ]
    lean, hf = _twins(embedded.model, embedded.tokenizer)
    params = SamplingParams(max_new_tokens=24, temperature=0.0, logprobs=True)
    _assert_same(lean.generate(chats, params), hf.generate(chats, params))


@pytest.fixture(scope="module")
def wide_generator(tokenizer):
    """A random 2-layer Llama with 64-wide heads, 3 query heads per kv head (as SmolLM2): the
    shapes the native decode-attention kernel runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return HFGenerator(model=LlamaForCausalLM(config).eval(), tokenizer=tokenizer, name="wide")


def test_native_step_logits_equal_forward(wide_generator):
    """The compiled kernel runs wherever it can be built (here: x86-64 with AVX2 and gcc)."""
    used = _step_logits_against_forward(wide_generator, FastDecoder(wide_generator.model))
    assert used == (native.disabled_reason() is None) == (native.library() is not None)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("model", ["tiny", "wide"])
def test_shared_prefix_attention_equals_plain_attention(tiny_generator, wide_generator, model, use_native):
    """Rows grouped by a shared system message (read once per group, softmaxes merged by their
    log-sum-exp) decode the same tokens and logits as every row reading its own copy; the KV a
    row keeps for its next turn is the same either way. Both attention paths: torch ops, and the
    native kernel where the model's shapes allow it (the wide model)."""
    gen = tiny_generator if model == "tiny" else wide_generator
    other = "Judge stories carefully. " * 4
    chats = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Which is bigger, a cat or a mouse?"}],
        [{"role": "system", "content": other}, {"role": "user", "content": "Name a colour."}],
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour. " * 7}],
        [{"role": "system", "content": other}, {"role": "user", "content": "Count to three, slowly and clearly."}],
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}],
    ]
    prompts = [gen.chat_ids(c) for c in chats]
    system_lens = [gen.cacheable_prefix(c, p) for c, p in zip(chats, prompts)]
    groups = [([0, 2, 4], system_lens[0]), ([1, 3], system_lens[1])]
    ids, mask = gen._pad(prompts)
    decoder = FastDecoder(gen.model, native=use_native)
    with torch.inference_mode():
        out = gen.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    layers = out.past_key_values.layers if hasattr(out, "past_key_values") else out.cache.layers
    reference = FastDecoder(gen.model, native=False).decode(
        [layer.keys for layer in layers], [layer.values for layer in layers], mask, out.logits[:, -1], 8,
        Sampler(greedy=True), gen.eos_ids, gen.tokenizer.pad_token_id, want_scores=True,
    )
    runs = [
        decoder.decode(
            [layer.keys for layer in layers], [layer.values for layer in layers], mask, out.logits[:, -1], 8,
            Sampler(greedy=True), gen.eos_ids, gen.tokenizer.pad_token_id, want_scores=True, shared=shared,
        )
        for shared in (None, groups)
    ]
    plain, cascade = runs
    assert plain.layout.order is None and cascade.layout.order is not None  # the cascade really ran
    attend = decoder._attention(cascade.layout, cascade.shared_kv, cascade.layout.width + 8, torch.float32)
    assert isinstance(attend, native.DecodeAttention) == (use_native and model == "wide" and native.library() is not None)
    assert torch.equal(plain.tokens, reference.tokens)
    torch.testing.assert_close(plain.scores, reference.scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(plain.tokens, cascade.tokens)
    torch.testing.assert_close(cascade.scores, plain.scores, atol=1e-4, rtol=1e-4)
    for row in range(len(chats)):
        for (k1, v1), (k2, v2) in zip(plain.row_cache(row, 5), cascade.row_cache(row, 5)):
            assert k1.shape == k2.shape == (1, k1.shape[1], len(prompts[row]) + 5, k1.shape[3])
            torch.testing.assert_close(k2, k1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v2, v1, atol=1e-5, rtol=1e-5)
    # one row per group on average is not worth it; groups must cover every row once
    assert decoder.decode(
        [layer.keys for layer in layers], [layer.values for layer in layers], mask, out.logits[:, -1], 2,
        Sampler(greedy=True), gen.eos_ids, gen.tokenizer.pad_token_id, shared=[([i], 3) for i in range(5)],
    ).layout.order is None
    with pytest.raises(ValueError, match="cover every row"):
        decoder.decode(
            [layer.keys for layer in layers], [layer.values for layer in layers], mask, out.logits[:, -1], 2,
            Sampler(greedy=True), gen.eos_ids, gen.tokenizer.pad_token_id, shared=[([0, 1], 3)],
        )


@pytest.mark.parametrize("use_native", [True, False])
def test_decode_samples_the_processed_distribution(tiny_generator, use_native):
    """The loop's draw (native or torch) at a temperature, with EOS banned below the minimum length:
    first-token frequencies over 6000 rows against the softmax of the given logits."""
    gen = tiny_generator
    decoder = FastDecoder(gen.model, native=use_native)
    rows, vocab = 6000, gen.model.config.vocab_size
    eos = gen.eos_ids[0]
    logits = torch.full((rows, vocab), -1e30)
    logits[:, [11, 12, 13]] = torch.tensor([0.5, 0.3, 0.2]).log()
    logits[:, eos] = 5.0  # the likeliest, but the minimum length forbids it
    keys = [torch.zeros(rows, decoder.num_kv_heads, 1, decoder.head_dim) for _ in decoder.layers]
    mask = torch.ones(rows, 1, dtype=torch.long)
    torch.manual_seed(0)
    got = decoder.decode(keys, keys, mask, logits, 1, Sampler(temperature=0.5, min_new_tokens=1), [eos], gen.tokenizer.pad_token_id)
    freq = torch.bincount(got.tokens[:, 0], minlength=vocab)[[11, 12, 13]].float() / rows
    want = torch.tensor([0.5, 0.3, 0.2]) ** 2 / (torch.tensor([0.5, 0.3, 0.2]) ** 2).sum()
    torch.testing.assert_close(freq, want, atol=0.02, rtol=0)
    assert (decoder.ops is not None) == (use_native and native.library() is not None)
