"""An OpenAI-compatible HTTP endpoint over a local model: ``python -m debate_lightning serve``.

    python -m debate_lightning serve --model embedded --port 8000
    # then, in a config:  backend: openai_compatible, base_url: http://127.0.0.1:8000/v1

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (``max_tokens``
or ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, ``logprobs``,
``top_logprobs``), ``GET /health`` and ``GET /v1/stats`` (batching counters).

Concurrent requests are gathered by one batching thread for ``batch_window`` seconds (or until
``max_batch_size`` sequences) and answered with ONE ``generate`` call per distinct set of sampling
parameters, so many tournament shards can share one loaded judge. Token log-probs are those of the
raw model (a teacher-forced forward pass over prompt + completion, before temperature), as vLLM
returns by default. A judge's request (one greedy token with log-probs) skips ``generate``: one
forward pass gives the token and its log-probs. Seeded sampling is reproducible for the same batch
(a seed seeds the whole generate call its group shares). Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
It is stdlib ``http.server`` only, bound to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20
MAX_N = 16
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "user", "assistant", "developer")


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------------------------
@dataclass
class CompletionRequest:
    chat: Chat
    params: SamplingParams
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    future: Future = field(default_factory=Future)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal sampling parameters share a generate call (log-probs are separate)."""
        p = self.params
        return (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed, tuple(p.stop))


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise APIError(400, f"{key} must be a number in [{lo}, {hi}], got {value!r}", param=key, code="invalid_value")
    return float(value)


def _integer(body: dict, key: str, lo: int, hi: int, default: int | None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise APIError(400, f"{key} must be an integer in [{lo}, {hi}], got {value!r}", param=key, code="invalid_value")
    return value


def parse_completion_request(body: Any, model_name: str, max_tokens_limit: int = 8192) -> CompletionRequest:
    """Validate a /v1/chat/completions body; ``APIError`` (400/404) says which field is wrong."""
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", param="model", code="model_not_found")
    if body.get("stream"):
        raise APIError(400, "stream=true is not supported by this server", param="stream", code="unsupported_value")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    chat: Chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        chat.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer({max_param: max_tokens}, max_param, 1, max_tokens_limit, 256)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "stop must be a string or a list of at most 4 strings", param="stop")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise APIError(400, f"logprobs must be a boolean, got {logprobs!r}", param="logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0) or 0
    if top_logprobs and not logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    params = SamplingParams(
        max_new_tokens=max_tokens or 256,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0) or 1.0,
        top_k=max(_integer(body, "top_k", -1, 10**6, 0) or 0, 0),  # a vLLM extension; -1 means off
        seed=_integer(body, "seed", -(2**63), 2**63 - 1, None),
        stop=stop,
    )
    n = _integer(body, "n", 1, MAX_N, 1) or 1
    return CompletionRequest(chat, params, n=n, logprobs=logprobs, top_logprobs=top_logprobs)


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
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


def _hf(generator: Generator):
    from debate_lightning.models.hf import HFGenerator

    if not isinstance(generator, HFGenerator):
        raise APIError(400, f"logprobs are not supported by {type(generator).__name__}", param="logprobs")
    return generator


def _entry(decode, token: int, logprob: float, top: list[tuple[float, int]]) -> dict[str, Any]:
    text = decode([token])
    return {
        "token": text,
        "logprob": logprob,
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": (t := decode([i])), "logprob": v, "bytes": list(t.encode())} for v, i in top],
    }


def first_token(generator: Generator, chats: list[Chat], k: int) -> tuple[list[Generation], list[list[dict]]]:
    """Greedy one-token completions with their log-probs, from ONE forward pass per chunk."""
    from debate_lightning.models.hf import eval_mode, positions_from_mask

    gen = _hf(generator)
    prompts = [gen.prompt_ids(c) for c in chats]
    gens: list[Generation] = [Generation("") for _ in chats]
    entries: list[list[dict]] = [[] for _ in chats]
    with eval_mode(gen.model):
        for chunk in gen.score_chunks([len(p) for p in prompts]):
            ids, mask = gen._left_pad([prompts[i] for i in chunk])
            position_ids = positions_from_mask(mask)
            logits = gen.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=1).logits
            logprobs = logits[:, -1].float().log_softmax(-1)
            best = logprobs.argmax(-1).tolist()
            top = logprobs.topk(k, dim=-1) if k > 0 else None
            for row, i in enumerate(chunk):
                token = best[row]
                usage = {"prompt_tokens": len(prompts[i]), "completion_tokens": 0}
                if token in gen.eos_ids:  # the model ends its answer at once, as generate would
                    gens[i] = Generation("", num_tokens=0, finished=True, token_ids=[], usage=usage)
                    continue
                usage["completion_tokens"] = 1
                gens[i] = Generation(gen.tokenizer.decode([token], skip_special_tokens=True).strip(), num_tokens=1,
                                     finished=False, token_ids=[token], usage=usage)
                pairs = list(zip(top.values[row].tolist(), top.indices[row].tolist())) if top is not None else []
                entries[i] = [_entry(gen.tokenizer.decode, token, float(logprobs[row, token]), pairs)]
    return gens, entries


def token_logprobs(generator: Generator, chats: list[Chat], gens: list[Generation], k: int) -> list[list[dict] | None]:
    """OpenAI ``logprobs.content`` entries per generation: each token, its log-prob and top ``k``.

    Needs a local transformers generator (``HFGenerator``): one teacher-forced forward pass per
    chunk over prompt + completion, keeping only the logits that predict completion tokens.
    """
    import torch

    from debate_lightning.models.hf import eval_mode, positions_from_mask

    generator = _hf(generator)
    prompts = [generator.prompt_ids(c) for c in chats]
    completions = [list(g.token_ids or []) for g in gens]
    seqs = [p + c for p, c in zip(prompts, completions)]
    out: list[list[dict] | None] = [[] for _ in gens]
    decode = generator.tokenizer.decode
    with eval_mode(generator.model):
        for chunk in generator.score_chunks([len(s) for s in seqs]):
            keep = max(len(completions[i]) for i in chunk)
            if keep == 0:
                continue
            ids, mask = generator._left_pad([seqs[i] for i in chunk])
            position_ids = positions_from_mask(mask)
            logits = generator.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep + 1).logits
            logprobs = logits[:, :-1].float().log_softmax(-1)  # row j predicts the token after it
            for row, i in enumerate(chunk):
                n = len(completions[i])
                lp = logprobs[row, keep - n :]
                tgt = torch.tensor(completions[i], device=lp.device)
                chosen = lp.gather(-1, tgt[:, None])[:, 0].tolist()
                top = lp.topk(k, dim=-1) if k > 0 else None
                entries = []
                for j, (tok, val) in enumerate(zip(completions[i], chosen)):
                    pairs = list(zip(top.values[j].tolist(), top.indices[j].tolist())) if top is not None else []
                    entries.append(_entry(decode, tok, val, pairs))
                out[i] = entries
    return out


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------
def completion_body(req: CompletionRequest, results: list[tuple[Generation, list[dict] | None]], model_name: str) -> dict:
    prompt_tokens = max((g.usage.get("prompt_tokens", 0) for g, _ in results), default=0)
    completion_tokens = sum(g.num_tokens for g, _ in results)
    choices = []
    for i, (gen, lps) in enumerate(results):
        choices.append({
            "index": i,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": {"content": lps} if req.logprobs else None,
            "finish_reason": "stop" if gen.finished else "length",
        })  # fmt: skip
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


class ServeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], generator: Generator, model_name: str, batcher: Batcher, request_timeout: float):
        self.generator, self.model_name, self.batcher, self.request_timeout = generator, model_name, batcher, request_timeout
        self.created = int(time.time())
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ServeServer:
        """Serve from a background thread (tests, notebooks); ``close()`` stops and joins it."""
        self._serving = threading.Thread(target=self.serve_forever, name="serve-http", daemon=True)
        self._serving.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.batcher.close()
        # Join the serving thread: left to finish on its own, it may drop the last reference to
        # the model (and free its tensors) while the interpreter is shutting down, which aborts.
        serving = getattr(self, "_serving", None)
        if serving is not None:
            serving.join(timeout=30)
        # Handler threads of idle keep-alive connections outlive close() (they wait on their
        # socket) and would hold the model through this server: let them hold nothing.
        self.generator = self.batcher.generator = None


class Handler(BaseHTTPRequestHandler):
    server: ServeServer
    protocol_version = "HTTP/1.1"
    server_version = "debate_lightning-serve"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the access log goes to debug
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self._write(status, data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout); nothing to answer
            self.close_connection = True
            log.debug("client %s hung up before its %d answer", self.address_string(), status)

    def _write(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "POST" if self.path.rstrip("/").endswith("/chat/completions") else "GET")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: APIError) -> None:
        self.server.batcher.count_http_error(err.status)
        self._send(err.status, err.body())

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _model_card(self) -> dict:
        return {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "debate_lightning"}

    def do_GET(self) -> None:
        route = self._route()
        try:
            if route == "/v1/models":
                self._send(200, {"object": "list", "data": [self._model_card()]})
            elif route.startswith("/v1/models/"):
                if route[len("/v1/models/") :] != self.server.model_name:
                    raise APIError(404, f"the model {route[len('/v1/models/'):]!r} does not exist", param="model", code="model_not_found")
                self._send(200, self._model_card())
            elif route in ("/health", "/v1/stats"):
                self._send(200, {"status": "ok", "model": self.server.model_name, **self.server.batcher.snapshot()})
            elif route == "/v1/chat/completions":
                raise APIError(405, "use POST for /v1/chat/completions", code="method_not_allowed")
            else:
                raise APIError(404, f"unknown route GET {route}", code="not_found")
        except APIError as err:
            self._error(err)

    def do_POST(self) -> None:
        route = self._route()
        try:
            body = self._read_json()  # always drain the body so a keep-alive connection stays in sync
            if route != "/v1/chat/completions":
                if route in ("/v1/models", "/health", "/v1/stats") or route.startswith("/v1/models/"):
                    raise APIError(405, f"use GET for {route}", code="method_not_allowed")
                raise APIError(404, f"unknown route POST {route}", code="not_found")
            req = parse_completion_request(body, self.server.model_name)
            if self.server.generator is None:
                raise APIError(503, "server is shutting down", type_="server_error")
            if req.logprobs:
                _hf(self.server.generator)  # 400 before queueing if this model cannot give log-probs
            try:
                results = self.server.batcher.submit(req).result(timeout=self.server.request_timeout)
            except TimeoutError:
                raise APIError(504, f"generation took longer than {self.server.request_timeout}s", type_="server_error") from None
            self._send(200, completion_body(req, results, self.server.model_name))
        except APIError as err:
            self._error(err)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer in the API's shape
            log.exception("unexpected error on %s", route)
            self._error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def _not_allowed(self) -> None:
        try:
            self._read_body()
        except APIError:
            pass
        self._error(APIError(405, f"method {self.command} is not allowed on {self._route()}", code="method_not_allowed"))

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise APIError(400, "invalid Content-Length header") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        return self.rfile.read(length) if length > 0 else b""

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"could not parse the JSON body: {e}", code="invalid_json") from None


def make_server(
    generator: Generator,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str | None = None,
    max_batch_size: int = 32,
    batch_window: float = 0.01,
    request_timeout: float = 600.0,
) -> ServeServer:
    """A ready (not yet serving) server; ``port=0`` picks a free port, see ``server.url``.

    Run it with ``server.serve_forever()``, or ``server.start()`` for a background thread, and stop
    it with ``server.close()``.
    """
    batcher = Batcher(generator, max_batch_size=max_batch_size, window=batch_window)
    try:
        return ServeServer((host, port), generator, model_name or generator.name, batcher, request_timeout)
    except OSError:
        batcher.close()
        raise


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m debate_lightning serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded', a model directory, a hub id or a .gguf file")
    parser.add_argument("--name", default=None, help="the model id clients use (default: the directory name)")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter directory to load on top")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most sequences per generate call")
    parser.add_argument("--batch-window-ms", type=float, default=10.0, help="how long to gather concurrent requests")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from debate_lightning.models.registry import ModelSpec, build_generator

    name = args.name or (args.model.rstrip("/").split("/")[-1] if args.model != "embedded" else "smollm2-135m")
    spec = ModelSpec(backend="hf", path=args.model, dtype=args.dtype, device=args.device, adapter=args.adapter, max_batch_size=args.max_batch_size)
    try:
        generator = build_generator(spec, name)
        server = make_server(generator, args.host, args.port, name, args.max_batch_size, args.batch_window_ms / 1000.0)
    except (OSError, ValueError) as e:
        print(f"serve: {e}", flush=True)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the model (there is no authentication)", args.host)
    print(f"serving {name!r} at {server.url}  (Ctrl-C or SIGTERM to stop)", flush=True)
    # SIGTERM (kill, Slurm, container stop) stops as Ctrl-C does; background jobs of a script may
    # not get SIGINT at all (the shell ignores it for them).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()  # serve_forever has returned, so its shutdown() does not wait
        print("serve: stopped", flush=True)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
