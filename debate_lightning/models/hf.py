"""A local transformers model as a ``Generator``: batched generation and teacher-forced scoring.

Batching is where rollout speed comes from (decode at batch 1 is overhead-bound), so every call
takes many chats, sorts them by length to keep padding small, and runs them in chunks of
``max_batch_size`` with left padding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams
from debate_lightning.models.embedded import EMBEDDED, resolve

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
    ):
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, dtype, device, adapter, gguf_file, trust_remote_code)
        elif tokenizer is None:
            raise ValueError("HFGenerator(model=...) also needs its tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.name = name or (Path(path).name if path != EMBEDDED else "smollm2-135m")
        self.eos_ids = self._eos_ids()
        self.stats = {"generate_calls": 0, "generated_sequences": 0, "forward_batches": 0}

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

    def _chunks(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices sorted by length, in chunks of at most ``max_batch_size`` (less padding)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.max_batch_size):
            yield order[start : start + self.max_batch_size]

    # -- generation ---------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        prompts = [self.prompt_ids(c) for c in chats]
        return self.generate_ids(prompts, params)

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Generate from already-tokenised prompts (the benchmark and trainers use this)."""
        results: list[Generation | None] = [None] * len(prompts)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        self.stats["generate_calls"] += 1
        with eval_mode(self.model):
            for chunk in self._chunks([len(p) for p in prompts]):
                for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params)):
                    results[i] = gen
        self.stats["generated_sequences"] += len(prompts)
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        ids, mask = self._left_pad(prompts)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens or None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        want_scores = params.logprobs or params.top_logprobs > 0
        if want_scores:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        start = time.perf_counter()
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        elapsed = time.perf_counter() - start
        sequences = out.sequences if want_scores else out
        new = sequences[:, ids.shape[1] :].tolist()
        step_logprobs = None
        if want_scores:
            # scores are the processed logits (temperature etc. applied), one tensor per step.
            step_logprobs = torch.stack(out.scores, dim=1).float().log_softmax(-1)
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
            for chunk in self._chunks([len(s) for s in seqs]):
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
        out: list[list[float]] = [[] for _ in prompts]
        with eval_mode(self.model):
            for chunk in self._chunks([len(p) for p in prompts]):
                ids, mask = self._left_pad([prompts[i] for i in chunk])
                last = self._forward_logprobs(ids, mask, last_only=True)
                for row, i in enumerate(chunk):
                    out[i] = [float(last[row, t]) for t in targets]
        return out

    def _forward_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        self.stats["forward_batches"] += 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if last_only else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
        if last_only:
            return logits[:, -1].float().log_softmax(-1)
        return logits.float().log_softmax(-1)


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
