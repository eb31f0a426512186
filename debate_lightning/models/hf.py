"""A local transformers model as a ``Generator``: batched generation and teacher-forced scoring.

Batching is where rollout speed comes from (decode at batch 1 is overhead-bound), so every call
takes many chats, sorts them by length to keep padding small, and runs them in chunks of
``max_batch_size`` with left padding.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams
from debate_lightning.models.decode import FastDecoder, Sampler
from debate_lightning.models.embedded import EMBEDDED, resolve
from debate_lightning.models import lower_right_attention
from debate_lightning.models.fused_modules import fuse_frozen_modules
from debate_lightning.models.last_position import last_position_only, trim_last_layer
from debate_lightning.models.packed_linear import pack_frozen_linears

def _cache_kwarg() -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever this one has."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each real token keeps its position in the unpadded row."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def load_model_and_tokenizer(
    path: str = EMBEDDED,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    adapter: str | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer from a directory, a hub id, a GGUF file or ``embedded``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is None and str(source).endswith(".gguf"):
        source, gguf_file = Path(source).parent, Path(source).name
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if isinstance(source, Path) or Path(str(source)).exists():
        if not Path(source).exists():
            raise FileNotFoundError(f"model directory {source} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=parse_dtype(dtype), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).exists():
            raise FileNotFoundError(f"PEFT adapter directory {adapter} does not exist")
        model = PeftModel.from_pretrained(model, adapter)
    model.to(device)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No grad and dropout off for the duration; the previous training mode comes back after.

    A live training policy generates rollouts through this, so it must not stay in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class HFGenerator(Generator):
    """A local causal LM. Pass ``model``/``tokenizer`` to wrap a live (e.g. training) model."""

    def __init__(
        self,
        path: str = EMBEDDED,
        dtype: str = "bfloat16",
        device: str = "cpu",
        adapter: str | None = None,
        max_batch_size: int = 32,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        name: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        prefix_cache: bool = True,
        prefix_cache_size: int = 256,
        prefix_cache_gb: float = 4.0,
        lean_decode: bool = True,
        packed_linear: bool = True,
        fused_modules: bool = True,
        score_token_budget: int = 1024,
    ):
        if prefix_cache and (prefix_cache_size < 1 or prefix_cache_gb <= 0):
            raise ValueError(
                f"prefix_cache_size must be >= 1 and prefix_cache_gb > 0 (got {prefix_cache_size}, {prefix_cache_gb}); "
                "set prefix_cache: false to turn the cache off"
            )
        live = model is not None
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, dtype, device, adapter, gguf_file, trust_remote_code)
            model.requires_grad_(False)  # ours, for inference only: frozen, so its linears can be packed
            if packed_linear:
                pack_frozen_linears(model)
            if fused_modules:  # native RMSNorm/MLP; the last layer at the last position only
                fuse_frozen_modules(model)
                trim_last_layer(model)
            if prefix_cache:  # cached-prefix forwards of one row without an explicit causal mask
                lower_right_attention.install(model)
        elif tokenizer is None:
            raise ValueError("HFGenerator(model=...) also needs its tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.score_token_budget = score_token_budget
        self.name = name or (Path(path).name if path != EMBEDDED else "smollm2-135m")
        self.eos_ids = self._eos_ids()
        self.stats = {
            "generate_calls": 0, "generated_sequences": 0, "forward_batches": 0,
            "prefix_hits": 0, "prefix_misses": 0, "reused_tokens": 0,
        }  # fmt: skip
        self.prefixes = PrefixCache(prefix_cache_size, int(prefix_cache_gb * 2**30)) if prefix_cache else None
        # A wrapped live model may change its weights between calls (training): keep its prefix
        # KV only within one call. A model we loaded ourselves is frozen, so its cache persists.
        self.live_model = live
        # The lean decode loop (models/decode.py) where the model allows it, else HF generate().
        self.lean_decode = lean_decode and FastDecoder.unsupported(self.model) is None
        self._decoder: FastDecoder | None = None

    # -- tokenisation -------------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def prompt_ids(self, chat: Chat) -> list[int]:
        """Token ids of the chat rendered with the model's template, ending in the assistant prompt."""
        ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def continuation_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _left_pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _chunks(self, lengths: Sequence[int], token_budget: int | None = None) -> Iterator[list[int]]:
        """Indices sorted by length, in chunks of at most ``max_batch_size`` (less padding).

        With ``token_budget`` a chunk also holds at most that many padded tokens (at least one
        row). Scoring is a compute-bound prefill: a few hundred rows' worth of tokens already fill
        the matmuls, while a wide padded batch only adds masked attention and memory traffic.
        """
        return iter(_length_groups(lengths, max_rows=self.max_batch_size, token_budget=token_budget))

    def score_chunks(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Chunks for teacher-forced scoring passes (prefill only): also bounded by ``score_token_budget``."""
        return self._chunks(lengths, self.score_token_budget)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        prompts = [self.prompt_ids(c) for c in chats]
        prefix_lens = [self.system_prefix_len(c, p) for c, p in zip(chats, prompts)] if self.prefixes is not None else None
        return self.generate_ids(prompts, params, prefix_lens)

    def system_prefix_len(self, chat: Chat, prompt: Sequence[int]) -> int:
        """Length of the leading system message's tokens in ``prompt`` (0 if it is not a clean prefix).

        Debate prompts keep the story in the system message, shared by both sides and every turn,
        so its KV cache is computed once per story instead of once per speech.
        """
        if not chat or chat[0].get("role") != "system" or len(chat) < 2:
            return 0
        ids = self.tokenizer.apply_chat_template(chat[:1], add_generation_prompt=False, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        n = len(ids)
        return n if n < len(prompt) and list(prompt[:n]) == list(ids) else 0

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, prefix_lens: Sequence[int] | None = None
    ) -> list[Generation]:
        """Generate from already-tokenised prompts (the benchmark and trainers use this).

        ``prefix_lens[i]`` tokens at the start of prompt i may be served from the prefix cache.
        """
        results: list[Generation | None] = [None] * len(prompts)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        self.stats["generate_calls"] += 1
        self._begin_call()
        with eval_mode(self.model):
            for chunk in self._chunks([len(p) for p in prompts]):
                lens = [prefix_lens[i] for i in chunk] if prefix_lens and self.prefixes is not None else None
                for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, lens)):
                    results[i] = gen
        self.stats["generated_sequences"] += len(prompts)
        return results  # type: ignore[return-value]

    def _begin_call(self) -> None:
        """A live model's weights change between calls: its caches last one call."""
        if self.live_model:
            if self.prefixes is not None:
                self.prefixes.clear()
            self._decoder = None

    def _generate_batch(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, prefix_lens: Sequence[int] | None = None
    ) -> list[Generation]:
        want_scores = params.logprobs or params.top_logprobs > 0
        start = time.perf_counter()
        cache, prefilled = None, None
        if prefix_lens and min(prefix_lens) > 0:
            kvs, cut = self._cached_prefixes(prompts, prefix_lens)
            if self.lean_decode:
                prefilled = self._prefill_after_prefixes(prompts, kvs, cut)
            else:
                ids, mask, cache = self._prefixed_batch(prompts, kvs, cut)
        else:
            ids, mask = self._left_pad(prompts)
        if self.lean_decode:
            if prefilled is None:
                prefilled = self._prefill_batch(ids, mask, cache)
            decoded = self._lean_generate(*prefilled, params, want_scores, _shared_groups(prompts, prefix_lens))
            new_ids, scores = decoded.tokens, decoded.scores
        else:
            new_ids, scores = self._hf_generate(ids, mask, cache, params, want_scores)
        elapsed = time.perf_counter() - start
        new = new_ids.tolist()
        if self.lean_decode and prefix_lens and not self.live_model:
            self._keep_rows(prompts, new, decoded)
        # scores are the processed logits (temperature etc. applied), one row per step.
        step_logprobs = scores.float().log_softmax(-1) if scores is not None else None
        gens = []
        for row, tokens in enumerate(new):
            n = len(tokens)
            finished = False
            for j, t in enumerate(tokens):
                if t in self.eos_ids:
                    n, finished = j, True
                    break
            tokens = tokens[:n]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            text, stopped = _apply_stop(text, params.stop)
            gen = Generation(
                text=text.strip(),
                num_tokens=n,
                finished=finished or stopped,
                token_ids=tokens,
                usage={"prompt_tokens": len(prompts[row]), "completion_tokens": n, "seconds": elapsed},
            )
            if step_logprobs is not None:
                lp = step_logprobs[row, :n]
                gen.logprob = float(lp.gather(-1, torch.tensor(tokens, device=lp.device)[:, None]).sum()) if n else 0.0
                if params.top_logprobs:
                    top = lp.topk(params.top_logprobs, dim=-1)
                    gen.top_logprobs = [
                        {self.tokenizer.decode([t]): float(v) for v, t in zip(vals.tolist(), idx.tolist())}
                        for vals, idx in zip(top.values, top.indices)
                    ]
            gens.append(gen)
        return gens

    def _hf_generate(self, ids, mask, cache, params: SamplingParams, want_scores: bool):
        """New token ids (B, n) and, with ``want_scores``, processed logits (B, n, V) by ``generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": params.min_new_tokens or None,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_ids,
        }
        if cache is not None:
            kwargs[_cache_kwarg()] = cache
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        if want_scores:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        sequences = out.sequences if want_scores else out
        scores = torch.stack(out.scores, dim=1) if want_scores else None
        return sequences[:, ids.shape[1] :], scores

    def _prefill_batch(self, ids, mask, cache):
        """One ``forward`` over the padded batch (after ``cache``'s prefix columns): per layer
        the (B, kv, W, D) keys and values, the mask and the logits after each prompt."""
        cached = cache.get_seq_length() if cache is not None else 0
        positions = positions_from_mask(mask)
        kwargs = {_cache_kwarg(): cache} if cache is not None else {}
        with last_position_only(self.model):
            out = self.model(
                input_ids=ids[:, cached:],
                attention_mask=mask,
                position_ids=positions[:, cached:],
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
        layers = getattr(out, _cache_kwarg()).layers
        return [layer.keys for layer in layers], [layer.values for layer in layers], mask, out.logits[:, -1]

    def _prefill_after_prefixes(self, prompts: Sequence[Sequence[int]], kvs: list, cut: Sequence[int]):
        """``_prefill_batch`` for rows whose first ``cut[i]`` tokens have cached KV ``kvs[i]``.

        Rows reuse different amounts (a turn's rows carry over their own earlier turns), so their
        new tokens differ in number: they are prefilled in groups of similar counts, where little
        padding is wasted, and the groups' keys/values put together (right-aligned) after.
        """
        groups = _length_groups([len(p) - n for p, n in zip(prompts, cut)], waste=0.15)
        if len(groups) == 1:
            return self._prefill_batch(*self._prefixed_batch(prompts, kvs, cut))
        parts = []
        for rows in groups:
            batch = self._prefixed_batch([prompts[i] for i in rows], [kvs[i] for i in rows], [cut[i] for i in rows])
            parts.append((rows, self._prefill_batch(*batch)))
        width = max(part[2].shape[1] for _, part in parts)
        first_keys, first_values = parts[0][1][0], parts[0][1][1]
        keys = [k.new_zeros(len(prompts), k.shape[1], width, k.shape[3]) for k in first_keys]
        values = [v.new_zeros(len(prompts), v.shape[1], width, v.shape[3]) for v in first_values]
        mask = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        logits = parts[0][1][3].new_empty(len(prompts), parts[0][1][3].shape[-1])
        for rows, (k_part, v_part, m_part, l_part) in parts:
            index = torch.tensor(rows, device=self.device)
            w = m_part.shape[1]
            for k, v, kp, vp in zip(keys, values, k_part, v_part):
                k[index, :, width - w :] = kp
                v[index, :, width - w :] = vp
            mask[index, width - w :] = m_part
            logits[index] = l_part
        return keys, values, mask, logits

    def _lean_generate(self, keys, values, mask, first_logits, params: SamplingParams, want_scores: bool, shared=None):
        """The same as ``_hf_generate``, by the lean decode loop after a prefill (``keys`` and
        ``values`` per layer, ``mask``, ``first_logits``); ``shared``: rows sharing a system
        message, whose KV the loop then reads once per group."""
        if self._decoder is None:
            self._decoder = FastDecoder(self.model)
        sampler = Sampler(
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_new_tokens=params.min_new_tokens,
            greedy=params.greedy,
        )
        return self._decoder.decode(
            keys,
            values,
            mask,
            first_logits,
            params.max_new_tokens,
            sampler,
            self.eos_ids,
            self.tokenizer.pad_token_id,
            want_scores,
            shared,
        )

    def _keep_rows(self, prompts: Sequence[Sequence[int]], new: list[list[int]], decoded) -> None:
        """Keep each row's prompt + new tokens with their KV, for the row's next turn.

        A multi-turn chat's next prompt starts with this one and the speech just written
        (``prompts/debate.yaml``), so the next turn prefills only what is new: the opponent's reply.
        """
        assert self.prefixes is not None
        steps = decoded.tokens.shape[1] - 1  # the last sampled token has no KV
        for row, tokens in enumerate(new):
            end = next((j + 1 for j, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            keep = min(end, steps)
            self.prefixes.put(tuple(prompts[row]) + tuple(tokens[:keep]), decoded.row_cache(row, keep))

    def _cached_prefixes(self, prompts: Sequence[Sequence[int]], prefix_lens: Sequence[int]) -> tuple[list, list[int]]:
        """Per prompt, the KV of its longest cached prefix and that prefix's length: at least
        ``prefix_lens[i]`` tokens (the system message), computed once and kept if missing."""
        assert self.prefixes is not None
        kvs, cut = [], []
        for p, n in zip(prompts, prefix_lens):
            reused, kv = self.prefixes.longest(p, limit=len(p) - 1)  # the last token is prefilled: its logits start decoding
            if reused < n:
                reused, kv = n, self._prefix_kv(tuple(p[:n]))
            else:
                self.stats["prefix_hits"] += 1
                kv = [(k[:, :, :reused], v[:, :, :reused]) for k, v in kv]
            self.stats["reused_tokens"] += reused
            kvs.append(kv)
            cut.append(reused)
        return kvs, cut

    def _prefixed_batch(self, prompts: Sequence[Sequence[int]], kvs: list, cut: Sequence[int]):
        """Ids, mask and a KV cache for prompts whose first ``cut[i]`` tokens have KV ``kvs[i]``.

        Row layout: ``[pad | prefix | pad | suffix]``. The cache covers the first block (prefixes
        left-padded to the longest); generate() then runs only the suffix block. Padding inside the
        row is masked, and position ids come from the mask's cumulative sum, so every real token
        keeps the position it has in the unpadded prompt: the result equals uncached generation.
        """
        prefixes = [tuple(p[:n]) for p, n in zip(prompts, cut)]
        suffixes = [list(p[n:]) for p, n in zip(prompts, cut)]
        width_p = max(len(p) for p in prefixes)
        width_s = max(len(s) for s in suffixes)
        batch = len(prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((batch, width_p + width_s), pad, dtype=torch.long)
        mask = torch.zeros((batch, width_p + width_s), dtype=torch.long)
        for i, (pre, suf) in enumerate(zip(prefixes, suffixes)):
            ids[i, width_p - len(pre) : width_p] = torch.tensor(pre)
            mask[i, width_p - len(pre) : width_p] = 1
            ids[i, width_p + width_s - len(suf) :] = torch.tensor(suf)
            mask[i, width_p + width_s - len(suf) :] = 1
        layers = []
        for layer in range(len(kvs[0])):
            pair = []
            for j in range(2):  # keys, values: each row's prefix copied once, right-aligned
                first = kvs[0][layer][j]
                out = first.new_empty(batch, first.shape[1], width_p, first.shape[3])
                for i, (kv, pre) in enumerate(zip(kvs, prefixes)):
                    gap = width_p - len(pre)
                    out[i, :, :gap] = 0
                    out[i, :, gap:] = kv[layer][j][0]
                pair.append(out)
            layers.append((pair[0], pair[1]))
        return ids.to(self.device), mask.to(self.device), _cache_of(layers)

    def _prefix_kv(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (key, value) of one prefix at batch 1, computed and kept in the LRU."""
        assert self.prefixes is not None
        self.stats["prefix_misses"] += 1
        ids = torch.tensor([prefix], device=self.device)
        with last_position_only(self.model):
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in getattr(out, _cache_kwarg()).layers]
        self.prefixes.put(prefix, kv)
        return kv

    # -- scoring ------------------------------------------------------------------------------
    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        if len(chats) != len(continuations):
            raise ValueError(f"score: {len(chats)} chats but {len(continuations)} continuations")
        prompts = [self.prompt_ids(c) for c in chats]
        conts = [self.continuation_ids(t) for t in continuations]
        return self.score_ids(prompts, conts)

    def score_ids(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        """Summed log-probs of each continuation after its prompt, by one forward pass per chunk."""
        out: list[float] = [0.0] * len(prompts)
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        with eval_mode(self.model):
            for chunk in self.score_chunks([len(s) for s in seqs]):
                ids, mask = self._left_pad([seqs[i] for i in chunk])
                logprobs = self._forward_logprobs(ids, mask)
                width = ids.shape[1]
                for row, i in enumerate(chunk):
                    n = len(continuations[i])
                    if n == 0:
                        continue
                    # logits at position t predict token t+1; the continuation is the last n tokens.
                    pos = torch.arange(width - n - 1, width - 1, device=ids.device)
                    tgt = ids[row, width - n :]
                    out[i] = float(logprobs[row, pos].gather(-1, tgt[:, None]).sum())
        return out

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        """One forward pass per chat when every choice is a single token (the judge's A/B case)."""
        choice_ids = [self.continuation_ids(c) for c in choices]
        if any(len(c) != 1 for c in choice_ids):
            return super().choice_logprobs(chats, choices)
        targets = [c[0] for c in choice_ids]
        prompts = [self.prompt_ids(c) for c in chats]
        # Every judge chat starts with the same system message: in a chunk of several (padded)
        # rows its KV comes from the prefix cache. Chunks of one row run in token order, each
        # after the KV of the longest start it shares with the one before (the system message;
        # with both orders judged, also the question and answer A of the same round's other order).
        prefix = [self.system_prefix_len(c, p) for c, p in zip(chats, prompts)] if self.prefixes is not None else None
        self._begin_call()
        out: list[list[float]] = [[] for _ in prompts]
        singles = []
        with eval_mode(self.model):
            for chunk in self.score_chunks([len(p) for p in prompts]):
                if len(chunk) == 1:
                    singles.append(chunk[0])
                    continue
                cache = None
                if prefix and min(prefix[i] for i in chunk) > 0:
                    rows = [prompts[i] for i in chunk]
                    ids, mask, cache = self._prefixed_batch(rows, *self._cached_prefixes(rows, [prefix[i] for i in chunk]))
                else:
                    ids, mask = self._left_pad([prompts[i] for i in chunk])
                last = self._forward_logprobs(ids, mask, last_only=True, cache=cache)
                for row, i in enumerate(chunk):
                    out[i] = [float(last[row, t]) for t in targets]
            reuse = self.prefixes is not None and self.model.config._attn_implementation == lower_right_attention.NAME
            previous: tuple[list[int], list] | None = None
            for i in sorted(singles, key=lambda i: prompts[i]):
                ids = torch.tensor([prompts[i]], device=self.device)
                cache, shared = None, _common_prefix(prompts[i], previous[0], len(prompts[i]) - 1) if previous else 0
                if reuse and shared >= MIN_REUSED_TOKENS:
                    cache = _cache_of([(k[:, :, :shared], v[:, :, :shared]) for k, v in previous[1]])
                    self.stats["reused_tokens"] += shared
                if reuse:
                    last, kv = self._forward_logprobs(ids, torch.ones_like(ids), last_only=True, cache=cache, keep_cache=True)
                    previous = (prompts[i], kv)
                else:
                    last = self._forward_logprobs(ids, torch.ones_like(ids), last_only=True)
                out[i] = [float(last[0, t]) for t in targets]
        return out

    def _forward_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, last_only: bool = False, cache=None, keep_cache: bool = False):
        """Log-probs after every position of ``ids`` (or only the last); with ``cache`` (a prefix
        KV, e.g. of ``_prefixed_batch``) only the columns after it are run. With ``keep_cache``
        returns (log-probs, per-layer (keys, values) of all of ``ids``)."""
        self.stats["forward_batches"] += 1
        position_ids = positions_from_mask(mask)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if last_only else {}
        cached = 0
        if cache is not None:
            cached = cache.get_seq_length()
            kwargs[_cache_kwarg()] = cache
        with last_position_only(self.model) if last_only else contextlib.nullcontext():
            out = self.model(input_ids=ids[:, cached:], attention_mask=mask, position_ids=position_ids[:, cached:],
                             use_cache=keep_cache or cache is not None, **kwargs)
        logits = out.logits
        logprobs = logits[:, -1].float().log_softmax(-1) if last_only else logits.float().log_softmax(-1)
        if keep_cache:
            return logprobs, [(layer.keys, layer.values) for layer in getattr(out, _cache_kwarg()).layers]
        return logprobs


def _length_groups(
    lengths: Sequence[int], max_rows: int | None = None, token_budget: int | None = None, waste: float | None = None
) -> list[list[int]]:
    """Indices sorted by length, grouped greedily: each row (the longest so far) joins the last
    group unless the group would then exceed ``max_rows`` rows, ``token_budget`` padded tokens,
    or pad more than ``waste`` of its tokens. A group always has at least one row."""
    groups: list[list[int]] = []
    total = 0  # real tokens in the last group
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups:
            padded = (len(groups[-1]) + 1) * lengths[i]
            if (
                (max_rows is None or len(groups[-1]) < max_rows)
                and (token_budget is None or padded <= token_budget)
                and (waste is None or padded <= (1 + waste) * (total + lengths[i]))
            ):
                groups[-1].append(i)
                total += lengths[i]
                continue
        groups.append([i])
        total = lengths[i]
    return groups


MIN_REUSED_TOKENS = 16  # a shorter shared start is not worth the second attention call


def _common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, limit: int | None = None) -> int:
    """How many leading tokens ``a`` and ``b`` share (at most ``limit``)."""
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit)
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def _cache_of(kv: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """A transformers cache holding per-layer (keys, values)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k, v, layer)
    return cache


def _shared_groups(prompts: Sequence[Sequence[int]], prefix_lens: Sequence[int] | None) -> list[tuple[list[int], int]] | None:
    """Rows grouped by their shareable prefix (``prefix_lens[i]`` tokens: the system message)."""
    if not prefix_lens or min(prefix_lens) <= 0:
        return None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (p, n) in enumerate(zip(prompts, prefix_lens)):
        groups.setdefault(tuple(p[:n]), []).append(i)
    return [(rows, len(key)) for key, rows in groups.items()]


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class PrefixCache:
    """An LRU of KV caches of token sequences, looked up by longest common prefix.

    It holds the stories' system messages (computed once per story) and, after lean decoding,
    every generated row (prompt + speech), so a multi-turn chat's next turn only prefills the new
    messages. An entry that a newer one extends is dropped (the newer one serves it). Bounded by
    ``size`` entries and ``max_bytes`` of tensors. Entries are whole token sequences, compared
    token by token: a hash collision would silently corrupt generations. Clear it whenever the
    model's weights change (a training policy does, every step).
    """

    def __init__(self, size: int, max_bytes: int = 4 * 2**30):
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[tuple[int, ...], tuple[np.ndarray, list, int]] = OrderedDict()
        self.bytes = 0

    def longest(self, tokens: Sequence[int], limit: int | None = None) -> tuple[int, list | None]:
        """(n, kv) of the entry sharing the longest prefix with ``tokens`` (at most ``limit``):
        its first n tokens are ``tokens[:n]``; slice its KV to n before use."""
        query = np.asarray(tokens[: len(tokens) if limit is None else limit], dtype=np.int64)
        best, best_key = 0, None
        for key, (arr, _, _) in self._items.items():
            if min(len(arr), len(query)) <= best:
                continue
            n = _common_prefix(arr, query)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._items.move_to_end(best_key)
        return best, self._items[best_key][1]

    def put(self, key: tuple[int, ...], value: list) -> None:
        arr = np.asarray(key, dtype=np.int64)
        for old in [k for k in self._items if len(k) < len(key) and k == key[: len(k)]]:
            self._drop(old)
        if key in self._items:
            self._drop(key)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in value)
        self._items[key] = (arr, value, nbytes)
        self.bytes += nbytes
        while len(self._items) > self.size or (self.bytes > self.max_bytes and len(self._items) > 1):
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= self._items.pop(key)[2]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
