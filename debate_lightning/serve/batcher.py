"""The request batcher: concurrent requests gathered into batched model calls.

Log-probs go through the public ``LocalGenerator`` protocol (``models/base.py``): the batcher never
pads, runs forwards or touches a tokenizer's internals itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future  # noqa: F401 - the type of CompletionRequest.future
from typing import Any

from debate_lightning.models.base import Chat, Generation, Generator, LocalGenerator, TopLogprobs
from debate_lightning.serve.api import APIError, CompletionRequest

log = logging.getLogger(__name__)


class Batcher:
    """Gathers concurrent requests and answers each group with one ``generate`` call.

    One worker thread owns the model. It takes the first waiting request, keeps collecting for
    ``window`` seconds or until ``max_batch_size`` sequences, then runs one generate call per
    distinct ``batch_key``. ``stats`` counts requests, sequences, model calls (``generate_calls``)
    and their sizes, requests whose batch failed (``errors``), error answers (``http_4xx``,
    ``http_5xx``) and seconds spent in the model.
    """

    def __init__(self, generator: Generator, max_batch_size: int = 32, window: float = 0.01):
        self.generator, self.max_batch_size, self.window = generator, max_batch_size, window
        self._queue: queue.Queue[CompletionRequest] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "requests": 0, "sequences": 0, "generate_calls": 0, "batched_requests_max": 0, "batch_sizes": [],
            "errors": 0, "http_4xx": 0, "http_5xx": 0, "queue_depth": 0, "model_seconds": 0.0,
        }  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, req: CompletionRequest) -> Future:
        if self._stop.is_set():
            raise APIError(503, "server is shutting down", type_="server_error")
        with self._lock:
            self.stats["requests"] += 1
            self.stats["sequences"] += req.n
        self._queue.put(req)
        return req.future

    def count_http_error(self, status: int) -> None:
        with self._lock:
            key = "http_4xx" if status < 500 else "http_5xx"
            self.stats[key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.stats)
            out["batch_sizes"] = list(self.stats["batch_sizes"][-100:])
        out["queue_depth"] = self._queue.qsize()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        while True:  # nobody will answer what is still queued
            try:
                self._queue.get_nowait().future.set_exception(APIError(503, "server is shutting down", type_="server_error"))
            except queue.Empty:
                break

    def _collect(self, first: CompletionRequest) -> list[CompletionRequest]:
        batch, size = [first], first.n
        deadline = time.monotonic() + self.window
        while size < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                req = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(req)
            size += req.n
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            groups: dict[tuple, list[CompletionRequest]] = {}
            for req in self._collect(first):
                groups.setdefault(req.batch_key, []).append(req)
            for reqs in groups.values():
                self._answer(reqs)

    def _answer(self, reqs: list[CompletionRequest]) -> None:
        chats = [r.chat for r in reqs for _ in range(r.n)]
        with self._lock:
            self.stats["generate_calls"] += 1
            self.stats["batch_sizes"].append(len(chats))
            self.stats["batched_requests_max"] = max(self.stats["batched_requests_max"], len(reqs))
        params = reqs[0].params
        k = max((r.top_logprobs for r in reqs if r.logprobs), default=-1)
        start = time.perf_counter()
        try:
            if k >= 0 and params.max_new_tokens == 1 and params.greedy and not params.stop and all(r.logprobs for r in reqs):
                # A judge's one-token verdict: one forward pass gives the token and its log-probs.
                gens, token_lps = first_token(self.generator, chats, k)
            else:
                gens = self.generator.generate(chats, params)
                token_lps = token_logprobs(self.generator, chats, gens, k) if k >= 0 else [None] * len(gens)
        except Exception as exc:  # noqa: BLE001 - every waiting client gets the error
            err = exc if isinstance(exc, APIError) else None
            if err is None:
                log.exception("generate failed for a batch of %d", len(chats))
                err = APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type_="server_error")
            with self._lock:
                self.stats["errors"] += len(reqs)
            for r in reqs:
                r.future.set_exception(err)
            return
        finally:
            with self._lock:
                self.stats["model_seconds"] += time.perf_counter() - start
        i = 0
        for r in reqs:
            r.future.set_result(list(zip(gens[i : i + r.n], token_lps[i : i + r.n])))
            i += r.n


def local(generator: Generator | None) -> LocalGenerator:
    """``generator`` if it can give token log-probs, else a 400 naming what it is."""
    if not isinstance(generator, LocalGenerator):
        raise APIError(400, f"logprobs are not supported by {type(generator).__name__}", param="logprobs")
    return generator


def _entry(gen: LocalGenerator, token: int, logprob: float, top: TopLogprobs) -> dict[str, Any]:
    text = gen.tokenizer.decode([token])
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": (t := gen.tokenizer.decode([i])), "logprob": v, "bytes": list(t.encode())}
                         for i, v in top],
    }


def first_token(generator: Generator, chats: list[Chat], k: int) -> tuple[list[Generation], list[list[dict]]]:
    """Greedy one-token completions with their log-probs, from ONE forward pass per chunk."""
    gen = local(generator)
    prompts = [gen.chat_ids(c) for c in chats]
    gens: list[Generation] = []
    entries: list[list[dict]] = []
    for prompt, top in zip(prompts, gen.next_token_logprobs(prompts, top_k=max(1, k))):
        token, logprob = top[0]
        usage = {"prompt_tokens": len(prompt), "completion_tokens": 0}
        if token in gen.eos_ids:  # the model ends its answer at once, as generate would
            gens.append(Generation("", num_tokens=0, finished=True, token_ids=[], usage=usage))
            entries.append([])
            continue
        usage["completion_tokens"] = 1
        gens.append(Generation(gen.tokenizer.decode([token], skip_special_tokens=True).strip(), num_tokens=1,
                               finished=False, token_ids=[token], usage=usage))
        entries.append([_entry(gen, token, logprob, top[:k])])
    return gens, entries


def token_logprobs(generator: Generator, chats: list[Chat], gens: list[Generation], k: int) -> list[list[dict] | None]:
    """OpenAI ``logprobs.content`` entries per generation: each token, its log-prob and top ``k``,
    teacher-forced over prompt + completion (the raw model's, before temperature)."""
    gen = local(generator)
    prompts = [gen.chat_ids(c) for c in chats]
    rows = gen.token_logprobs(prompts, [list(g.token_ids or []) for g in gens], top_k=k)
    return [[_entry(gen, token, lp, top) for token, lp, top in row] for row in rows]
