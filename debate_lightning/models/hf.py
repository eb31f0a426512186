"""A local transformers model as a ``LocalGenerator``: batched generation and teacher-forced scoring.

Batching is where rollout speed comes from (decode at batch 1 is overhead-bound), so every call
takes many chats, sorts them by length to keep padding small, and runs them in chunks of
``max_batch_size`` with left padding. Prefixes shared across calls (a story's system message, a
debater's previous turn) come from a KV cache (``models/kv.py``).

On a CPU where the engine is on (``debate_lightning.accel``), decoding runs its lean loop and
forwards its packed/fused modules; everywhere else this is stock transformers: ``generate`` and SDPA.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from debate_lightning import accel
from debate_lightning.models import chat as chat_tokens
from debate_lightning.models.base import Chat, Generation, LocalGenerator, SamplingParams, TopLogprobs, layer_indices
from debate_lightning.models.embedded import EMBEDDED
from debate_lightning.models.kv import (KV, PrefixCache, cache_kwarg, cache_of, common_prefix, kv_of, left_pad,
                                        length_groups, merge_prefills, positions_from_mask, prefixed_batch,
                                        shared_groups, shared_starts)
from debate_lightning.models.loading import auto_dtype, eval_mode, load_model_and_tokenizer, resolve_device
from debate_lightning.models.spec import HFOptions, ModelSpec

MIN_REUSED_TOKENS = 16  # a shorter shared start is not worth the second attention call


class HFGenerator(LocalGenerator):
    """A local causal LM. ``live_generator`` wraps a live (training) model instead of loading one."""

    def __init__(self, path: str = EMBEDDED, dtype: str = "bfloat16", device: str = "cpu", adapter: str | None = None,
                 max_batch_size: int = 32, trust_remote_code: bool = False, name: str | None = None,
                 options: HFOptions | None = None, model: torch.nn.Module | None = None, tokenizer: Any = None,
                 around: Callable[[], contextlib.AbstractContextManager] | None = None, **option_overrides: Any):
        options = options or HFOptions()
        if option_overrides:  # HFGenerator(prefix_cache=False, ...): the HFOptions fields as keywords
            options = HFOptions.parse({**vars(options), **option_overrides}, where="HFGenerator")
        self.options = options
        self.live_model = model is not None
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, dtype, device, adapter, options.gguf_file,
                                                        trust_remote_code, options.load_in_4bit)
            model.requires_grad_(False)  # ours, for inference only: frozen
        elif tokenizer is None:
            raise ValueError("HFGenerator(model=...) also needs its tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        # the CPU engine reads weights whole; a live model sharded by FSDP runs stock transformers
        self.sharded = any(isinstance(p, DTensor) for p in model.parameters())
        self.accel = accel.enabled(self.device, options.accel) and not self.sharded
        if self.accel and not self.live_model:
            accel.prepare_inference(model, options.packed_linear, options.fused_modules, options.prefix_cache)
        self.max_batch_size = max_batch_size
        self.path = None if self.live_model else path  # the model as a config gives it (a probe checks it)
        self.name = name or (Path(path).name if path != EMBEDDED else "smollm2-135m")
        self.eos_ids = self._eos_ids()
        self.stats = dict.fromkeys(("generate_calls", "generated_sequences", "forward_batches", "prefix_hits",
                                    "prefix_misses", "reused_tokens"), 0)
        self.prefixes = PrefixCache(options.prefix_cache_size, int(options.prefix_cache_gb * 2**30)) if options.prefix_cache else None
        self.lean_decode = self.accel and options.lean_decode and accel.decoder_unsupported(self.model) is None
        self._decoder: accel.FastDecoder | None = None
        self._around, self._depth = around, 0

    # -- tokenisation ---------------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def chat_ids(self, chat: Chat) -> list[int]:
        return chat_tokens.chat_ids(self.tokenizer, chat)

    def text_ids(self, text: str) -> list[int]:
        return chat_tokens.text_ids(self.tokenizer, text)

    def cacheable_prefix(self, chat: Chat, ids: Sequence[int]) -> int:
        return chat_tokens.system_prefix_len(self.tokenizer, chat, ids) if self.prefixes is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clear_cache(self) -> None:
        if self.prefixes is not None:
            self.prefixes.clear()
        if self.live_model:  # the decode loop's packed copy of the weights; a loaded model's never change
            self._decoder = None

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        """Around every public call: no grad, dropout off, and for a live model its KV cache on and
        ``around`` (e.g. adapters off) entered once however calls nest. A live model's weights
        change between calls, so its caches last one call."""
        if self._depth:
            yield
            return
        self._depth += 1
        config = getattr(self.model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        try:
            if self.live_model:
                self.clear_cache()
                if config is not None:
                    config.use_cache = True  # training turned it off; generation needs it
            with (self._around() if self._around else contextlib.nullcontext()), eval_mode(self.model, inference=not self.sharded):
                yield
        finally:
            if self.live_model and config is not None:
                config.use_cache = use_cache
            self._depth -= 1

    def _chunks(self, lengths: Sequence[int], token_budget: int | None = None) -> list[list[int]]:
        """Indices sorted by length, in chunks of at most ``max_batch_size`` rows (less padding)
        and, for scoring, at most ``token_budget`` padded tokens: scoring is a compute-bound
        prefill, where a wide padded batch only adds masked attention and memory traffic."""
        return length_groups(lengths, max_rows=self.max_batch_size, token_budget=token_budget)

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(seqs, self.tokenizer.pad_token_id, self.device)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        prompts = [self.chat_ids(c) for c in chats]
        return self.generate_ids(prompts, params, [self.cacheable_prefix(c, p) for c, p in zip(chats, prompts)])

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                     prefix_lens: Sequence[int] | None = None) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        self.stats["generate_calls"] += 1
        with self._session():
            for chunk in self._chunks([len(p) for p in prompts]):
                lens = [prefix_lens[i] for i in chunk] if prefix_lens and self.prefixes is not None else None
                for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, lens)):
                    results[i] = gen
        self.stats["generated_sequences"] += len(prompts)
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                        prefix_lens: Sequence[int] | None = None) -> list[Generation]:
        want_scores = params.logprobs or params.top_logprobs > 0
        start = time.perf_counter()
        cache, prefilled, cached = None, None, bool(prefix_lens) and min(prefix_lens or [0]) > 0
        lean = self.lean_decode and params.repetition_penalty == 1.0  # the engine's sampler has no penalty
        if cached:
            kvs, cut = self._cached_prefixes(prompts, prefix_lens)
            if lean:
                prefilled = self._prefill_groups(prompts, kvs, cut)
            else:
                ids, mask, cache = prefixed_batch(prompts, kvs, cut, self.tokenizer.pad_token_id, self.device)
        else:
            ids, mask = self._pad(prompts)
        if lean:
            decoded = self._lean_generate(prefilled or self._prefill(ids, mask, cache), params, want_scores,
                                          shared_groups(prompts, prefix_lens))
            new_ids, scores = decoded.tokens, decoded.scores
        else:
            new_ids, scores = self._hf_generate(ids, mask, cache, params, want_scores)
        new = new_ids.tolist()
        if lean and cached and not self.live_model:
            self._keep_rows(prompts, new, decoded)
        return self._generations(prompts, new, scores, params, time.perf_counter() - start)

    def _generations(self, prompts, new: list[list[int]], scores, params: SamplingParams, seconds: float):
        """Generations from new token ids (cut at EOS and stop strings) and processed logits."""
        step_logprobs = scores.float().log_softmax(-1) if scores is not None else None
        gens = []
        for row, tokens in enumerate(new):
            n = next((j for j, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            finished, tokens = n < len(tokens), tokens[:n]
            text, stopped = _apply_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
            gen = Generation(text=text.strip(), num_tokens=n, finished=finished or stopped, token_ids=tokens,
                             usage={"prompt_tokens": len(prompts[row]), "completion_tokens": n, "seconds": seconds})
            if step_logprobs is not None:
                lp = step_logprobs[row, :n]
                gen.logprob = float(lp.gather(-1, torch.tensor(tokens, device=lp.device)[:, None]).sum()) if n else 0.0
                if params.top_logprobs:
                    top = lp.topk(params.top_logprobs, dim=-1)
                    gen.top_logprobs = [{self.tokenizer.decode([t]): float(v) for v, t in zip(vals.tolist(), idx.tolist())}
                                        for vals, idx in zip(top.values, top.indices)]
            gens.append(gen)
        return gens

    def _hf_generate(self, ids, mask, cache, params: SamplingParams, want_scores: bool):
        """New token ids (B, n) and, with ``want_scores``, processed logits (B, n, V) by ``generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "min_new_tokens": params.min_new_tokens or None,
                                  "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.eos_ids}
        if cache is not None:
            kwargs[cache_kwarg()] = cache
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if want_scores:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        sequences = out.sequences if want_scores else out
        scores = torch.stack(out.scores, dim=1) if want_scores else None
        return sequences[:, ids.shape[1] :], scores

    # -- the engine's decode loop (CPU) -----------------------------------------------------------
    def _prefill(self, ids, mask, cache):
        """One forward over the padded batch (after ``cache``'s prefix columns): per layer the
        (B, kv, W, D) keys and values, the mask, and the logits after each prompt."""
        cached = cache.get_seq_length() if cache is not None else 0
        kwargs = {cache_kwarg(): cache} if cache is not None else {}
        with accel.last_position_only(self.model):
            out = self.model(input_ids=ids[:, cached:], attention_mask=mask, position_ids=positions_from_mask(mask)[:, cached:],
                             use_cache=True, logits_to_keep=1, **kwargs)
        kv = kv_of(out)
        return [k for k, _ in kv], [v for _, v in kv], mask, out.logits[:, -1]

    def _prefill_groups(self, prompts: Sequence[Sequence[int]], kvs: list[KV], cut: Sequence[int]):
        """``_prefill`` for rows whose first ``cut[i]`` tokens have cached KV ``kvs[i]``. Rows reuse
        different amounts (each carries over its own earlier turns), so they are prefilled in groups
        of similar new-token counts, little padding wasted, and put together right-aligned after."""
        pad = self.tokenizer.pad_token_id
        groups = length_groups([len(p) - n for p, n in zip(prompts, cut)], waste=0.15)
        if len(groups) == 1:  # one batch, in the callers' row order (a group lists its rows sorted by length)
            return self._prefill(*prefixed_batch(prompts, kvs, cut, pad, self.device))
        parts = [(rows, self._prefill(*prefixed_batch([prompts[i] for i in rows], [kvs[i] for i in rows],
                                                      [cut[i] for i in rows], pad, self.device))) for rows in groups]
        return merge_prefills(parts, len(prompts))

    def _lean_generate(self, prefilled, params: SamplingParams, want_scores: bool, shared=None):
        """The same as ``_hf_generate`` by the engine's decode loop after a prefill; ``shared``:
        rows sharing a system message, whose KV the loop then reads once per group."""
        if self._decoder is None:
            self._decoder = accel.FastDecoder(self.model)
        sampler = accel.Sampler(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                min_new_tokens=params.min_new_tokens, greedy=params.greedy)
        return self._decoder.decode(*prefilled, params.max_new_tokens, sampler, self.eos_ids,
                                    self.tokenizer.pad_token_id, want_scores, shared)

    def _keep_rows(self, prompts: Sequence[Sequence[int]], new: list[list[int]], decoded) -> None:
        """Keep each row's prompt + new tokens with their KV: a multi-turn chat's next prompt starts
        with this one and the speech just written, so the next turn prefills only what is new."""
        assert self.prefixes is not None
        steps = decoded.tokens.shape[1] - 1  # the last sampled token has no KV
        for row, tokens in enumerate(new):
            end = next((j + 1 for j, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            keep = min(end, steps)
            self.prefixes.put(tuple(prompts[row]) + tuple(tokens[:keep]), decoded.row_cache(row, keep))

    # -- the prefix cache -------------------------------------------------------------------------
    def _cached_prefixes(self, prompts: Sequence[Sequence[int]], prefix_lens: Sequence[int]) -> tuple[list[KV], list[int]]:
        """Per prompt, the KV of its longest cached prefix and that prefix's length: at least
        ``prefix_lens[i]`` tokens (the system message), computed once and kept if missing."""
        assert self.prefixes is not None
        kvs, cut = [], []
        for p, n in zip(prompts, prefix_lens):
            reused, kv = self.prefixes.longest(p, limit=len(p) - 1)  # the last token is prefilled: its logits start decoding
            if reused < n:
                reused, kv = n, self._prefix_kv(tuple(p[:n]), reused, kv)
            else:
                self.stats["prefix_hits"] += 1
                kv = [(k[:, :, :reused], v[:, :, :reused]) for k, v in kv]
            self.stats["reused_tokens"] += reused
            kvs.append(kv)
            cut.append(reused)
        return kvs, cut

    def _prefix_kv(self, prefix: tuple[int, ...], start: int = 0, start_kv: KV | None = None) -> KV:
        """Per-layer (key, value) of one prefix at batch 1, computed and kept in the LRU; after the
        cached KV ``start_kv`` of its first ``start`` tokens when given."""
        assert self.prefixes is not None
        self.stats["prefix_misses"] += 1
        ids = torch.tensor([prefix], device=self.device)
        kwargs: dict[str, Any] = {}
        if start_kv is not None and start >= MIN_REUSED_TOKENS:
            # an explicit mask over cache + new tokens: every attention (stock SDPA included) is causal after the cache
            kwargs[cache_kwarg()] = cache_of([(k[:, :, :start], v[:, :, :start]) for k, v in start_kv])
            kwargs["attention_mask"] = torch.ones_like(ids)
            kwargs["position_ids"] = torch.arange(start, len(prefix), device=self.device)[None]
            ids = ids[:, start:]
            self.stats["reused_tokens"] += start
        with accel.last_position_only(self.model):
            kv = kv_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs))
        self.prefixes.put(prefix, kv)
        return kv

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        if len(chats) != len(continuations):
            raise ValueError(f"score: {len(chats)} chats but {len(continuations)} continuations")
        return self.score_ids([self.chat_ids(c) for c in chats], [self.text_ids(t) for t in continuations])

    def score_ids(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        return [sum(lp for _, lp, _ in row) for row in self.token_logprobs(prompts, continuations)]

    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                       top_k: int = 0) -> list[list[tuple[int, float, TopLogprobs]]]:
        """One teacher-forced forward per chunk over prompt + continuation; only the logits that
        predict continuation tokens go through the softmax."""
        out: list[list[tuple[int, float, TopLogprobs]]] = [[] for _ in prompts]
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        with self._session():
            for chunk in self._chunks([len(s) for s in seqs], self.options.score_token_budget):
                keep = max(len(continuations[i]) for i in chunk)
                if keep == 0:
                    continue
                ids, mask = self._pad([seqs[i] for i in chunk])
                logits = self._forward(ids, mask, keep=keep + 1).logits
                logprobs = logits[:, :-1].float().log_softmax(-1)  # column j predicts the token after it
                for row, i in enumerate(chunk):
                    tokens = list(continuations[i])
                    lp = logprobs[row, keep - len(tokens) :]
                    chosen = lp.gather(-1, torch.tensor(tokens, dtype=torch.long, device=lp.device)[:, None])[:, 0].tolist()
                    top = _top(lp, top_k)
                    out[i] = [(t, v, top[j]) for j, (t, v) in enumerate(zip(tokens, chosen))]
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], top_k: int = 1) -> list[TopLogprobs]:
        out: list[TopLogprobs] = [[] for _ in prompts]
        with self._session():
            for chunk in self._chunks([len(p) for p in prompts], self.options.score_token_budget):
                ids, mask = self._pad([prompts[i] for i in chunk])
                for row, top in zip(chunk, _top(self._last_logprobs(ids, mask), max(1, top_k))):
                    out[row] = top
        return out

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        """One forward pass per chat when every choice is a single token (the judge's A/B case).

        Every judge chat starts with the same system message, and the chats of candidate speeches
        for one turn share all but the speech: in a chunk of several (padded) rows each row's
        longest such start comes from the prefix cache (computed once, at batch 1), and chunks are
        formed by the tokens left to run. Chunks of one row run in token order, each after the KV
        of the longest start it shares with the one before, where the engine's attention allows it.
        """
        choice_ids = [self.text_ids(c) for c in choices]
        if any(len(c) != 1 for c in choice_ids):
            return super().choice_logprobs(chats, choices)
        targets = [c[0] for c in choice_ids]
        prompts = [self.chat_ids(c) for c in chats]
        prefix = shared_starts(prompts, [self.cacheable_prefix(c, p) for c, p in zip(chats, prompts)],
                               MIN_REUSED_TOKENS)
        out: list[list[float]] = [[] for _ in prompts]
        singles = []
        with self._session():
            for chunk in self._chunks([len(p) - n for p, n in zip(prompts, prefix)], self.options.score_token_budget):
                if len(chunk) == 1:
                    singles.append(chunk[0])
                    continue
                rows, cache = [prompts[i] for i in chunk], None
                if min(prefix[i] for i in chunk) > 0:
                    ids, mask, cache = prefixed_batch(rows, *self._cached_prefixes(rows, [prefix[i] for i in chunk]),
                                                      self.tokenizer.pad_token_id, self.device)
                else:
                    ids, mask = self._pad(rows)
                last = self._last_logprobs(ids, mask, cache)
                for row, i in enumerate(chunk):
                    out[i] = [float(last[row, t]) for t in targets]
            reuse = self.prefixes is not None and accel.reuses_cached_rows(self.model)
            previous: tuple[list[int], KV] | None = None
            for i in sorted(singles, key=lambda i: prompts[i]):
                ids = torch.tensor([prompts[i]], device=self.device)
                shared = common_prefix(prompts[i], previous[0], len(prompts[i]) - 1) if previous else 0
                cache = None
                if reuse and shared >= MIN_REUSED_TOKENS:
                    cache = cache_of([(k[:, :, :shared], v[:, :, :shared]) for k, v in previous[1]])
                    self.stats["reused_tokens"] += shared
                last, kv = self._last_logprobs(ids, torch.ones_like(ids), cache, keep_cache=reuse)
                previous = (prompts[i], kv) if reuse else None
                out[i] = [float(last[0, t]) for t in targets]
        return out

    def hidden_states(self, prompts: Sequence[Sequence[int]], layers: Sequence[int]) -> torch.Tensor:
        """Left-padded chunks as in scoring; the last position only (the engine's trimmed last layer computes no other)."""
        index, out = layer_indices(layers, self.num_layers), torch.empty(len(prompts), len(layers), self.hidden_size)
        with self._session():
            for chunk in self._chunks([len(p) for p in prompts], self.options.score_token_budget):
                ids, mask = self._pad([prompts[i] for i in chunk])
                with accel.last_position_only(self.model):
                    states = self._forward(ids, mask, keep=1, output_hidden_states=True).hidden_states
                out[chunk] = torch.stack([states[j][:, -1] for j in index], dim=1).float().cpu()
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache=None, keep: int = 0, use_cache: bool = False, **extra):
        """The model over ``ids`` (only the columns after ``cache``), logits of the last ``keep``
        positions (0: all)."""
        self.stats["forward_batches"] += 1
        cached = cache.get_seq_length() if cache is not None else 0
        kwargs: dict[str, Any] = {cache_kwarg(): cache} if cache is not None else {}
        return self.model(input_ids=ids[:, cached:], attention_mask=mask, position_ids=positions_from_mask(mask)[:, cached:],
                          use_cache=use_cache or cache is not None, logits_to_keep=keep, **kwargs, **extra)

    def _last_logprobs(self, ids, mask, cache=None, keep_cache: bool | None = None):
        """Log-probs after the last position; with ``keep_cache`` (True/False) also the KV of all of
        ``ids`` (or None)."""
        with accel.last_position_only(self.model):
            out = self._forward(ids, mask, cache, keep=1, use_cache=bool(keep_cache))
        logprobs = out.logits[:, -1].float().log_softmax(-1)
        if keep_cache is None:
            return logprobs
        return logprobs, (kv_of(out) if keep_cache else None)


def live_generator(model: torch.nn.Module, tokenizer: Any, name: str = "policy", max_batch_size: int = 32,
                   base_only: bool = False, options: HFOptions | None = None) -> HFGenerator:
    """A generator over a live (training) model: its caches last one call (the weights change
    between calls), generation turns ``config.use_cache`` on, and with ``base_only`` every call
    runs with PEFT adapters disabled (the model as it was before training, with no second copy)."""
    around = None
    if base_only:
        if not (hasattr(model, "disable_adapter") and hasattr(model, "peft_config")):
            raise ValueError("live_generator(base_only=True) needs a PEFT model (adapters to switch off)")
        around = model.disable_adapter  # type: ignore[assignment]
    return HFGenerator(model=model, tokenizer=tokenizer, name=name, max_batch_size=max_batch_size, options=options,
                       around=around)


def build_hf(spec: ModelSpec, name: str) -> HFGenerator:
    """The ``hf`` backend's factory (``models/registry.py``)."""
    device = resolve_device(spec.device)
    return HFGenerator(path=spec.path, dtype=auto_dtype(device) if spec.dtype == "auto" else spec.dtype, device=device,
                       adapter=spec.adapter, max_batch_size=spec.max_batch_size, trust_remote_code=spec.trust_remote_code,
                       name=name, options=spec.hf_options())


def _top(logprobs: torch.Tensor, k: int) -> list[list[TopLogprobs]] | list[TopLogprobs]:
    """Per row of ``logprobs`` (.., V), its ``k`` best (id, log-prob) pairs, best first."""
    if k <= 0:
        return [[] for _ in range(logprobs.shape[0])]
    top = logprobs.topk(k, dim=-1)
    return [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
