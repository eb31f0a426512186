import math

import pytest
import torch

from debate_lightning.debate.agents import Judge
from debate_lightning.models.base import SamplingParams, normalize
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.kv import PrefixCache
from debate_lightning.models.loading import eval_mode

CHATS = [
    [{"role": "user", "content": "Which is bigger, a cat or a mouse?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour. " * 7}],
    [{"role": "user", "content": "Hi"}],
]


def test_generate_fixed_length_and_order(tiny_generator):
    params = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=0.0)
    gens = tiny_generator.generate(CHATS, params)
    assert len(gens) == len(CHATS)
    assert all(g.num_tokens == 6 and not g.finished for g in gens)
    # Left padding and length-sorted chunks must not change any row's greedy output.
    alone = [tiny_generator.generate([c], params)[0] for c in CHATS]
    assert [g.token_ids for g in gens] == [a.token_ids for a in alone]


def test_sampling_seed_reproducible(tiny_generator):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=123)
    a = tiny_generator.generate(CHATS, params)
    b = tiny_generator.generate(CHATS, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_score_batched_equals_single(tiny_generator):
    conts = ["A cat.", "Blue", "Hello there, friend"]
    batched = tiny_generator.score(CHATS, conts)
    single = [tiny_generator.score([c], [t])[0] for c, t in zip(CHATS, conts)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(s < 0 for s in batched)


def test_choice_logprobs_match_hand_log_softmax(tiny_generator):
    gen = tiny_generator
    got = gen.choice_logprobs(CHATS, ["A", "B"])
    a_id, b_id = gen.text_ids("A")[0], gen.text_ids("B")[0]
    for chat, (lp_a, lp_b) in zip(CHATS, got):
        ids = torch.tensor([gen.chat_ids(chat)])
        with torch.no_grad():
            logits = gen.model(input_ids=ids).logits[0, -1].double()
        # log-softmax by hand: x - log(sum(exp(x)))
        lse = math.log(sum(math.exp(v) for v in logits.tolist()))
        assert lp_a == pytest.approx(logits[a_id].item() - lse, abs=1e-4)
        assert lp_b == pytest.approx(logits[b_id].item() - lse, abs=1e-4)
        p = normalize([lp_a, lp_b])
        assert sum(p) == pytest.approx(1.0)
        assert p[0] == pytest.approx(math.exp(lp_a) / (math.exp(lp_a) + math.exp(lp_b)))
    # The one-forward fast path agrees with generic teacher-forced scoring.
    generic = gen.score([c for c in CHATS for _ in "AB"], ["A", "B"] * len(CHATS))
    assert [x for pair in got for x in pair] == pytest.approx(generic, abs=1e-4)


def test_eval_mode_restores_training(tiny_generator):
    model = tiny_generator.model
    model.train()
    with eval_mode(model):
        assert not model.training
        assert not torch.is_grad_enabled()
    assert model.training
    model.eval()


def test_logprobs_and_top_logprobs(tiny_generator):
    params = SamplingParams(max_new_tokens=4, min_new_tokens=4, temperature=0.0, logprobs=True, top_logprobs=3)
    g = tiny_generator.generate(CHATS[:1], params)[0]
    assert g.logprob is not None and g.logprob <= 0
    assert len(g.top_logprobs) == 4 and all(len(d) <= 3 for d in g.top_logprobs)
    # Greedy: the chosen token is the most likely one, so its log-prob is the top entry of each step.
    assert g.logprob == pytest.approx(sum(max(d.values()) for d in g.top_logprobs), abs=1e-4)


def test_missing_model_dir_is_clear(tmp_path):
    with pytest.raises((FileNotFoundError, OSError)) as e:
        HFGenerator(path=str(tmp_path / "nope"), dtype="float32")
    assert "nope" in str(e.value)


def test_judge_probability_sums_to_one(tiny_generator, questions):
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Transcript

    judge = Judge(tiny_generator, both_orders=False)
    trs = [Transcript(q, Format(kind="empty")) for q in questions]
    p = judge.p_a(trs)
    chats = [t.judge_chat(__import__("debate_lightning.debate.agents", fromlist=["x"]).prompts_for(t.format)) for t in trs]
    lps = tiny_generator.choice_logprobs(chats, ["A", "B"])
    for pa, (a, b) in zip(p, lps):
        assert 0 < pa < 1
        assert pa == pytest.approx(1 / (1 + math.exp(b - a)))


def test_prefix_cache_equals_uncached_generation(tiny_model_dir, questions):
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Speech, Transcript

    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, prefix_cache=False)
    chats = []
    for q in questions:
        tr = Transcript(q, Format(kind="debate"))
        p = prompts_for(tr.format)
        chats.append(tr.debater_chat(0, p))
        tr.speeches.append(Speech(0, 0, "A short opening speech with a <quote>quote</quote>."))
        chats.append(tr.debater_chat(1, p))
    params = SamplingParams(max_new_tokens=8, min_new_tokens=8, temperature=0.0, logprobs=True)
    a = cached.generate(chats, params)
    b = plain.generate(chats, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprob for g in a] == pytest.approx([g.logprob for g in b], abs=1e-3)
    # Both sides of a round share the story's system prompt: one prefix computed per story.
    assert cached.stats["prefix_misses"] == len({q.story for q in questions})
    assert cached.stats["prefix_hits"] == len(chats) - cached.stats["prefix_misses"]
    again = cached.generate(chats, params)
    assert [g.token_ids for g in again] == [g.token_ids for g in a]
    assert cached.stats["prefix_misses"] == len({q.story for q in questions})


def test_next_turn_prefills_only_what_is_new(tiny_model_dir, questions, monkeypatch):
    """A debater's next chat extends its last prompt + speech: the KV kept after decoding serves
    all of that prompt (and the speech, as far as it re-tokenises the same), and the
    generations still equal uncached ones. (The engine's decode loop keeps that KV.)"""
    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "1")
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Speech, Transcript

    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, prefix_cache=False)
    assert cached.lean_decode
    fmt = Format(kind="debate", num_speeches=2)
    transcripts = [Transcript(q, fmt) for q in questions[:3]]
    params = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=0.0, logprobs=True)
    last_prompts: dict[int, list[list[int]]] = {}  # side -> its prompt token ids of its last turn, per round
    for step, (side,) in enumerate(fmt.steps()):
        chats = [tr.debater_chat(side, prompts_for(fmt)) for tr in transcripts]
        prompts = [cached.chat_ids(c) for c in chats]
        reused = cached.stats["reused_tokens"]
        a, b = cached.generate(chats, params), plain.generate(chats, params)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [g.logprob for g in a] == pytest.approx([g.logprob for g in b], abs=1e-3)
        if side in last_prompts:
            assert all(p[: len(before)] == before for p, before in zip(prompts, last_prompts[side]))
            assert cached.stats["reused_tokens"] - reused >= sum(len(before) for before in last_prompts[side])
        last_prompts[side] = prompts
        for tr, g in zip(transcripts, a):
            tr.speeches.append(Speech(side, step, g.text))
    assert cached.prefixes.bytes > 0


def test_prefix_cache_longest_match_replacement_and_byte_bound():
    kv = lambda n: [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]  # noqa: E731 - 16 bytes per token and layer
    cache = PrefixCache(size=8, max_bytes=16 * 12)
    cache.put((1, 2, 3), kv(3))
    cache.put((1, 2, 3, 4, 5), kv(5))  # extends the first entry, which it replaces
    assert len(cache) == 1 and cache.bytes == 16 * 5
    assert cache.longest([1, 2, 3, 4, 9])[0] == 4
    assert cache.longest([1, 2, 3, 4, 5, 6], limit=3)[0] == 3
    assert cache.longest([7, 1, 2]) == (0, None)
    cache.put((7, 8, 9, 10), kv(4))
    assert len(cache) == 2 and cache.longest([7, 8, 0])[0] == 2
    cache.put((5, 5, 5, 5, 5), kv(5))  # 14 tokens > 12: the least recently used entry goes
    assert len(cache) == 2 and cache.longest([1, 2, 3])[0] == 0 and cache.bytes == 16 * 9


def test_judge_scoring_with_cached_system_prompt_equals_uncached(tiny_model_dir):
    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, score_token_budget=150)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=4, prefix_cache=False)
    system = {"role": "system", "content": "You judge debates. " * 5}
    chats = [[system, {"role": "user", "content": f"Question {i}: which? " * (1 + 3 * i)}] for i in range(5)]
    a, b = cached.choice_logprobs(chats, ["A", "B"]), plain.choice_logprobs(chats, ["A", "B"])
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    left = [len(ids) - cached.cacheable_prefix(c, ids) for c, ids in ((c, cached.chat_ids(c)) for c in chats)]
    chunks = cached._chunks(left, cached.options.score_token_budget)  # chunked by the tokens left to run
    batched = sum(len(c) for c in chunks if len(c) > 1)
    assert 0 < batched < len(chats)  # the budget split them: chunks of several rows and of one
    # chunks of several rows used the one cached prefix; single rows ran whole (unmasked, causal)
    assert cached.stats["prefix_misses"] == 1 and cached.stats["prefix_hits"] == batched - 1


def test_judging_candidates_reuses_the_start_they_share(tiny_model_dir):
    """Chats judging candidate speeches for one turn share all but the speech: each such start
    is computed once (after the cached start it shares with others) and the probabilities equal
    judging every chat whole."""
    from debate_lightning.models.kv import common_prefix

    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=8)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=8, prefix_cache=False)
    system = {"role": "system", "content": "You judge debates about stories you cannot read. " * 2}
    chats = []
    for q in range(2):
        for first, second in (("Mara", "Tom"), ("Tom", "Mara")):  # both orders
            head = f"Question {q}: who carried the lamp down to the old harbour? A: {first} B: {second}. " * 2
            for speech in ("Mara said so twice.", "Tom was seen at the quay.", "Ilse never left."):  # candidates
                chats.append([system, {"role": "user", "content": head + f"Debater A: {speech}"}])
    chats.append([system, {"role": "user", "content": "Unrelated: which? A or B."}])
    a, b = cached.choice_logprobs(chats, ["A", "B"]), plain.choice_logprobs(chats, ["A", "B"])
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    assert cached.stats["prefix_misses"] == 4  # one start per (question, order)
    prompts = [cached.chat_ids(c) for c in chats]
    system_len = cached.cacheable_prefix(chats[0], prompts[0])
    starts = [max(common_prefix(p, o) for o in prompts if o is not p) for p in prompts]
    assert min(starts[:-1]) > system_len + 16
    assert cached.stats["reused_tokens"] >= sum(starts[:-1]) + system_len


def test_live_model_prefix_cache_does_not_outlive_a_call(tiny_generator):
    live = HFGenerator(model=tiny_generator.model, tokenizer=tiny_generator.tokenizer)
    chat = [{"role": "system", "content": "shared"}, {"role": "user", "content": "hi"}]
    live.generate([chat, chat], SamplingParams(max_new_tokens=2))
    live.generate([chat], SamplingParams(max_new_tokens=2))
    assert live.stats["prefix_misses"] == 2 and live.stats["prefix_hits"] == 1


def test_peft_adapter_is_loaded(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)  # a non-zero B makes the adapter change the output
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32")
    adapted = HFGenerator(path=str(tiny_model_dir), dtype="float32", adapter=str(tmp_path / "adapter"))
    a = plain.score(CHATS[:1], ["A cat."])[0]
    b = adapted.score(CHATS[:1], ["A cat."])[0]
    assert a != pytest.approx(b, abs=1e-3)
    with pytest.raises(FileNotFoundError, match="adapter"):
        HFGenerator(path=str(tiny_model_dir), dtype="float32", adapter=str(tmp_path / "missing"))


@pytest.mark.parametrize("ragged", [True, False, "one group, longest first"])
def test_rows_prefilled_alone_or_padded_generate_the_same(tiny_model_dir, questions, monkeypatch, ragged):
    """After cached prefixes of different lengths, running each row's new tokens alone (no
    padding, then put together) or as one padded batch gives what an uncached generator gives,
    whatever order the grouping lists the rows in."""
    import debate_lightning.models.hf as hf

    chosen = []

    def groups(lengths):
        chosen.append(ragged)
        if ragged is True:
            return [[i] for i in range(len(lengths))]
        if ragged is False:
            return [list(range(len(lengths)))]
        return [sorted(range(len(lengths)), key=lambda i: -lengths[i])]  # one group, not in the rows' order

    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "1")  # ragged prefill groups are the engine's decode path
    batching = hf.length_groups  # keep how generate() batches; replace only the prefill grouping
    monkeypatch.setattr(hf, "length_groups", lambda lengths, **b: groups(lengths) if "waste" in b else batching(lengths, **b))
    cached = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=8)
    plain = HFGenerator(path=str(tiny_model_dir), dtype="float32", max_batch_size=8, prefix_cache=False)
    system = {"role": "system", "content": "Shared rules for everyone. " * 6}
    chats = [[system, {"role": "user", "content": "Tell me about item %d. " % i * (1 + 2 * i)}] for i in range(4)]
    params = SamplingParams(max_new_tokens=5, min_new_tokens=5, temperature=0.0, logprobs=True)
    first = cached.generate(chats[:2], params)  # rows 0 and 1 now have their whole prompt + speech cached
    follow = [c + [{"role": "assistant", "content": g.text}, {"role": "user", "content": "More."}] for c, g in zip(chats, first)]
    follow += chats[2:]
    a, b = cached.generate(follow, params), plain.generate(follow, params)
    assert chosen and set(chosen) == {ragged}
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprob for g in a] == pytest.approx([g.logprob for g in b], abs=1e-3)


def test_similar_lengths_bound_the_padding():
    from debate_lightning.models.kv import length_groups as _length_groups

    lengths = [170, 276, 168, 169, 268, 171, 98]
    groups = _length_groups(lengths, waste=0.15)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 1.15 * sum(lengths[i] for i in g)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[98], [168, 169, 170, 171], [268, 276]]


def test_prefix_cache_bounds_are_checked(tiny_generator):
    for bad in ({"prefix_cache_size": 0}, {"prefix_cache_gb": -1.0}):
        with pytest.raises(ValueError, match="prefix_cache_size must be >= 1 and prefix_cache_gb > 0"):
            HFGenerator(model=tiny_generator.model, tokenizer=tiny_generator.tokenizer, **bad)
    HFGenerator(model=tiny_generator.model, tokenizer=tiny_generator.tokenizer, prefix_cache=False, prefix_cache_size=0)


def test_a_missing_local_model_path_is_named_not_taken_for_a_hub_id(tmp_path):
    for missing in (tmp_path / "no-such-model", "./no-such-model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="no-such-model|a/b/c"):
            HFGenerator(path=str(missing), dtype="float32")
