"""Remote models as ``Generator``s: OpenAI, Anthropic, and any OpenAI-compatible server (vLLM, ``serve``).

All three share one request loop (``APIGenerator``):

- **concurrency**: a batch of chats runs on a thread pool of ``max_concurrency`` workers;
- **retries**: 408/409/425/429/5xx answers, timeouts and connection errors are retried up to
  ``max_retries`` times with exponential backoff and equal jitter (``delay = min(backoff_max,
  backoff_base * 2**attempt)``, sleep uniformly in ``[delay/2, delay]``; a ``Retry-After`` header
  raises the sleep, capped at ``backoff_max``). The SDKs' own retries are switched off
  (``max_retries=0``) so every attempt is ours and counted in ``stats``;
- **timeout**: ``timeout`` seconds per HTTP request;
- **failures**: a request that still fails becomes ``Generation(text="", error=...)``; one failed
  chat never raises for the whole batch, the engine marks its speech and round as failed;
- **usage**: prompt/completion tokens, attempts and seconds go in ``Generation.usage``, plus
  ``cost_usd`` when a ``prices`` table (USD per million tokens) is given;
- **keys**: read from the environment only (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, or the
  variable named by the ``api_key_env`` option). A key is never accepted in a config, and is
  scrubbed from every error message we record.

The judge's P(A) on OpenAI-style endpoints comes from the top log-probs of the first answer token
(``choice_logprobs``); Anthropic returns no log-probs, so it raises ``ScoringUnsupported`` and the
judge parses the verdict text instead.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams, ScoringUnsupported
from debate_lightning.models.spec import ModelSpec

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx (incl. Anthropic's 529 "overloaded")
MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit
MISSING_MARGIN = 1.0  # nats below the least likely listed token, for a choice absent from the top-k


class _RequestError(Exception):
    """A failed attempt, classified: ``retryable`` and the server's ``retry_after`` seconds."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retryable, self.retry_after, self.status = retryable, retry_after, status


def choice_scores(top: Mapping[str, float], choices: Sequence[str], margin: float = MISSING_MARGIN) -> list[float]:
    """Unnormalised log-probs of each choice as the first answer token, from one top-k dict.

    Tokens match a choice after stripping whitespace (and the BPE space markers ``Ġ``/``▁`` some
    servers return), so ``"A"`` and ``" A"`` both count for A and their probabilities add up.
    A choice absent from the top-k has at most the probability of the least likely listed token;
    it gets that minimum minus ``margin`` nats, an estimate, not a bound. When no choice is
    listed at all the answer carries no information, and every score is NaN (no verdict) rather
    than a fake 50/50.
    """
    if not top:
        return [math.nan] * len(choices)
    matched: list[list[float]] = [[] for _ in choices]
    for token, lp in top.items():
        key = token.strip().lstrip("Ġ▁").strip()
        for i, choice in enumerate(choices):
            if key == choice.strip():
                matched[i].append(lp)
    if not any(matched):
        return [math.nan] * len(choices)
    floor = min(top.values()) - margin
    return [_logsumexp(m) if m else floor for m in matched]


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def read_api_key(env_var: str, required: bool = True) -> str | None:
    """The key in ``$env_var``; a clear error naming the variable (never a value) if it is unset."""
    key = os.environ.get(env_var)
    if not key and required:
        raise ValueError(f"API key missing: set the environment variable {env_var} (keys are read from the environment only)")
    return key or None


class APIGenerator(Generator):
    """The shared request loop; subclasses implement ``_request(chat, params) -> Generation``.

    Args:
        model: the API model name.
        name: the name used in results.
        max_concurrency: most requests in flight at once.
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
        backoff_base: first backoff delay in seconds; doubles per retry.
        backoff_max: cap on one backoff delay (and on a server's ``Retry-After``).
        prices: optional ``{"input": USD, "output": USD}`` per million tokens, for ``cost_usd``.
        jitter_seed: seeds the backoff jitter (sampling seeds come from ``SamplingParams.seed``).
        sleep: injectable for tests.
    """

    provider = "api"

    def __init__(
        self,
        model: str | None,
        name: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        prices: Mapping[str, float] | None = None,
        jitter_seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if prices is not None and not {"input", "output"} <= set(prices):
            raise ValueError(f"prices must give 'input' and 'output' USD per million tokens, got {dict(prices)}")
        self.model = model
        self.name = name or model or self.provider
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.prices = dict(prices) if prices else None
        self._rng = random.Random(jitter_seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._secrets: list[str] = []  # scrubbed from every recorded error
        # Per chat of the latest call, the error of a request that failed (None if it succeeded):
        # choice_logprobs can only return NaN for a failed chat, so the reason is kept here.
        self.last_errors: list[str | None] = []
        self.stats: dict[str, float] = {
            "requests": 0, "attempts": 0, "retries": 0, "failures": 0,
            "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
        }  # fmt: skip

    # -- the request loop ---------------------------------------------------------------------
    def _request(self, chat: Chat, params: SamplingParams) -> Generation:  # pragma: no cover - abstract
        raise NotImplementedError

    def _classify(self, exc: Exception) -> _RequestError:
        """Turn an SDK exception into a ``_RequestError`` (retryable or not)."""
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            retry_after = _retry_after(getattr(exc, "response", None))
            retryable = status in RETRY_STATUS or status >= 500
            if _error_code(exc) == "insufficient_quota":  # a 429 that waiting does not fix
                retryable = False
            return _RequestError(f"{type(exc).__name__} (HTTP {status}): {_message(exc)}", retryable, retry_after, status)
        name = type(exc).__name__
        if "Timeout" in name or "Connection" in name:
            return _RequestError(f"{name}: {_message(exc)}", True)
        return _RequestError(f"{name}: {_message(exc)}", False)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2**attempt)
        with self._lock:
            wait = delay / 2 + self._rng.uniform(0, delay / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait

    def _call(self, fn: Callable[[], Any]) -> tuple[Any, int, str | None]:
        """Run one request with retries: (result or None, attempts, error or None)."""
        self._count(requests=1)
        attempt = 0
        while True:
            self._count(attempts=1)
            try:
                return fn(), attempt + 1, None
            except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
                err = exc if isinstance(exc, _RequestError) else self._classify(exc)
                if not err.retryable or attempt >= self.max_retries:
                    self._count(failures=1)
                    message = self._scrub(f"{self.provider} request failed after {attempt + 1} attempt(s): {err}")
                    log.warning("%s: %s", self.name, message)
                    return None, attempt + 1, message
                wait = self._backoff(attempt, err.retry_after)
                log.info("%s: %s; retry %d/%d in %.2fs", self.name, self._scrub(str(err)), attempt + 1, self.max_retries, wait)
                self._count(retries=1)
                self._sleep(wait)
                attempt += 1

    def _map(self, fn: Callable[[Chat], Any], chats: Sequence[Chat]) -> list[Any]:
        """``fn`` over every chat, at most ``max_concurrency`` at a time, results in order."""
        if len(chats) <= 1:
            return [fn(c) for c in chats]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"{self.provider}-request")
            pool = self._pool
        return list(pool.map(fn, chats))

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        def one(chat: Chat) -> Generation:
            start = time.perf_counter()
            gen, attempts, error = self._call(lambda: self._request(chat, params))
            if error is not None:
                return Generation(text="", finished=False, error=error, usage={"attempts": attempts, "model": self.model})
            gen.usage.update(attempts=attempts, seconds=time.perf_counter() - start, model=self.model)
            self._account(gen)
            return gen

        gens = self._map(one, chats)
        self.last_errors = [g.error for g in gens]
        return gens

    # -- bookkeeping --------------------------------------------------------------------------
    def _count(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def _account(self, gen: Generation) -> None:
        p, c = gen.usage.get("prompt_tokens", 0) or 0, gen.usage.get("completion_tokens", 0) or 0
        deltas: dict[str, float] = {"prompt_tokens": p, "completion_tokens": c}
        if self.prices:
            cost = (p * self.prices["input"] + c * self.prices["output"]) / 1e6
            gen.usage["cost_usd"] = cost
            deltas["cost_usd"] = cost
        self._count(**deltas)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text[:1000]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(model={self.model!r}, name={self.name!r})"


# ---------------------------------------------------------------------------------------------
# OpenAI chat completions (and any server speaking the same protocol)
# ---------------------------------------------------------------------------------------------
class OpenAIGenerator(APIGenerator):
    """OpenAI chat completions. ``base_url`` points it at any compatible server.

    Args (besides ``APIGenerator``'s):
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; None for api.openai.com.
        api_key_env: the environment variable holding the key.
        key_required: fail at construction when the key is unset (False for local servers,
            which then get the placeholder key ``EMPTY``).
        use_logprobs: judge by first-token log-probs; False always parses the verdict text.
        top_logprobs: how many alternatives to ask for when judging (at most 20).
        max_tokens_field: ``max_completion_tokens`` (current OpenAI models) or ``max_tokens``
            (vLLM, older servers).
        extra_body: extra JSON fields sent with every request (e.g. vLLM's ``top_k``).
    """

    provider = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        key_required: bool = True,
        use_logprobs: bool = True,
        top_logprobs: int = MAX_TOP_LOGPROBS,
        max_tokens_field: str = "max_completion_tokens",
        extra_body: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(model, **kwargs)
        import openai

        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in 1..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(f"max_tokens_field must be max_tokens or max_completion_tokens, got {max_tokens_field!r}")
        key = read_api_key(api_key_env, required=key_required) or "EMPTY"
        self._secrets.append(key)
        self._model_lock = threading.Lock()
        self.base_url, self.use_logprobs, self.top_logprobs = base_url, use_logprobs, top_logprobs
        self.max_tokens_field, self.extra_body = max_tokens_field, dict(extra_body or {})
        self.client = openai.OpenAI(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)

    def _model_name(self) -> str:
        """The configured model, or the first one the server lists (vLLM and ``serve`` list theirs)."""
        if self.model is None:
            with self._model_lock:
                if self.model is None:
                    models = self.client.models.list().data
                    if not models:
                        raise _RequestError(f"server {self.base_url} lists no models", retryable=False)
                    self.model = models[0].id
        return self.model

    def _body(self, chat: Chat, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model_name(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
            self.max_tokens_field: params.max_new_tokens,
            "temperature": max(params.temperature, 0.0),
        }
        if params.top_p < 1.0:
            body["top_p"] = params.top_p
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # the API takes at most four
        if params.logprobs or params.top_logprobs:
            body["logprobs"] = True
            if params.top_logprobs:
                body["top_logprobs"] = min(params.top_logprobs, MAX_TOP_LOGPROBS)
        extra = dict(self.extra_body)
        if params.top_k:
            extra.setdefault("top_k", params.top_k)  # vLLM extension; OpenAI itself has no top_k
        if params.repetition_penalty != 1.0:
            extra.setdefault("repetition_penalty", params.repetition_penalty)  # vLLM extension, as top_k
        if extra:
            body["extra_body"] = extra
        return body

    def _create(self, body: dict[str, Any]):
        return self.client.chat.completions.create(**body)

    def _request(self, chat: Chat, params: SamplingParams) -> Generation:
        resp = self._create(self._body(chat, params))
        if not resp.choices:
            raise _RequestError("response has no choices", retryable=True)
        choice = resp.choices[0]
        gen = Generation(
            text=(choice.message.content or "").strip(),
            finished=choice.finish_reason != "length",
            usage=_usage(resp.usage, "prompt_tokens", "completion_tokens"),
        )
        gen.num_tokens = gen.usage.get("completion_tokens", 0)
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if content:
            gen.logprob = sum(t.logprob for t in content)
            if params.top_logprobs:
                gen.top_logprobs = [{a.token: a.logprob for a in (t.top_logprobs or [])} for t in content]
        return gen

    # -- judging by first-token log-probs -----------------------------------------------------
    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        """Log-probs of each choice as the first answer token, read off ONE one-token request.

        Asks for ``max_tokens=1`` with ``top_logprobs`` alternatives and scores each choice with
        ``choice_scores`` (missing choice: least likely listed minus ``MISSING_MARGIN`` nats).
        A failed request gives NaN scores (the judge records no verdict, the round fails and a
        resume retries it). If the server returns no log-probs, or rejects the request for
        asking, this raises ``ScoringUnsupported`` (and remembers it) so the judge parses text.
        """
        if not self.use_logprobs:
            raise ScoringUnsupported(f"{self.name}: log-probs disabled (use_logprobs: false)")
        params = SamplingParams(max_new_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs)
        unsupported = threading.Event()

        def one(chat: Chat) -> tuple[list[float], str | None]:
            def attempt() -> Generation:
                try:
                    return self._request(chat, params)
                except Exception as exc:  # noqa: BLE001
                    err = self._classify(exc)
                    if err.status in (400, 422) and "logprob" in str(err).lower():
                        unsupported.set()
                    raise err from exc

            gen, _attempts, error = self._call(attempt)
            if error is not None:
                return [math.nan] * len(choices), error
            self._account(gen)
            if not gen.top_logprobs:
                unsupported.set()
                return [math.nan] * len(choices), None
            scores = choice_scores(gen.top_logprobs[0], choices)
            return scores, (f"none of {list(choices)} among the top {self.top_logprobs} first tokens" if math.isnan(scores[0]) else None)

        results = self._map(one, chats)
        out = [scores for scores, _ in results]
        self.last_errors = [err for _, err in results]
        if unsupported.is_set():
            self.use_logprobs = False
            raise ScoringUnsupported(f"{self.name}: the server returns no token log-probs; judging from text")
        return out


class OpenAICompatibleGenerator(OpenAIGenerator):
    """A self-hosted OpenAI-compatible server (vLLM, ``python -m debate_lightning serve``).

    ``base_url`` is required; the key is optional (``EMPTY`` when ``OPENAI_API_KEY`` is unset;
    required when ``api_key_env`` names a variable); ``model`` defaults to
    the first model the server lists; ``max_tokens`` is the field every such server accepts; the
    default timeout is 300 s, since a shared server on modest hardware queues requests.
    """

    provider = "openai_compatible"

    def __init__(self, model: str | None = None, base_url: str | None = None, **kwargs: Any):
        if not base_url:
            raise ValueError("openai_compatible needs base_url, e.g. http://127.0.0.1:8000/v1")
        kwargs.setdefault("key_required", "api_key_env" in kwargs)  # a named variable must be set
        kwargs.setdefault("max_tokens_field", "max_tokens")
        kwargs.setdefault("timeout", 300.0)  # a busy self-hosted server queues; its requests wait longer
        super().__init__(model, base_url=base_url, **kwargs)


# ---------------------------------------------------------------------------------------------
# Anthropic messages
# ---------------------------------------------------------------------------------------------
class AnthropicGenerator(APIGenerator):
    """Anthropic messages. No log-probs: the judge parses the verdict text (e.g. "A | 80%").

    The current Messages API (and SDK) takes no ``temperature``/``top_p``/``top_k``: the model
    samples its own way. ``send_sampling=True`` sends them anyway (as extra body fields) for
    older models or proxies that accept them.
    """

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        send_sampling: bool = False,
        **kwargs: Any,
    ):
        if not model:
            raise ValueError("anthropic needs a model name, e.g. claude-sonnet-4-5")
        super().__init__(model, **kwargs)
        import anthropic

        key = read_api_key(api_key_env, required=True)
        self._secrets.append(key or "")
        self.base_url, self.send_sampling = base_url, send_sampling
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)

    @staticmethod
    def to_messages(chat: Chat) -> tuple[str | None, list[dict[str, str]]]:
        """System text apart; consecutive same-role turns merged (the API wants them alternating)."""
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system") or None
        messages: list[dict[str, str]] = []
        for m in chat:
            if m["role"] == "system":
                continue
            role = "assistant" if m["role"] == "assistant" else "user"
            if messages and messages[-1]["role"] == role:
                messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + m["content"]}
            else:
                messages.append({"role": role, "content": m["content"]})
        if not messages or messages[0]["role"] != "user":
            messages.insert(0, {"role": "user", "content": "(begin)"})
        return system, messages

    def _request(self, chat: Chat, params: SamplingParams) -> Generation:
        if params.repetition_penalty != 1.0:
            raise _RequestError(f"{self.name}: the Anthropic API has no repetition_penalty (got "
                                f"{params.repetition_penalty}); leave it at 1.0 for this model", retryable=False)
        system, messages = self.to_messages(chat)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": params.max_new_tokens}
        if system:
            body["system"] = system
        if self.send_sampling:
            extra: dict[str, Any] = {"temperature": min(max(params.temperature, 0.0), 1.0)}
            if params.top_p < 1.0:  # some models reject temperature and top_p together
                extra["top_p"] = params.top_p
            if params.top_k:
                extra["top_k"] = params.top_k
            body["extra_body"] = extra
        stops = [s for s in params.stop if s.strip()]  # whitespace-only stop sequences are rejected
        if stops:
            body["stop_sequences"] = stops
        resp = self.client.messages.create(**body)
        text = "".join(getattr(b, "text", "") for b in resp.content if getattr(b, "type", "") == "text")
        usage = _usage(resp.usage, "input_tokens", "output_tokens")
        return Generation(
            text=text.strip(),
            num_tokens=usage.get("completion_tokens", 0),
            finished=resp.stop_reason != "max_tokens",
            usage=usage,
        )

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        raise ScoringUnsupported(f"{self.name}: the Anthropic API returns no log-probs; judging from text")


# ---------------------------------------------------------------------------------------------
# helpers and registry factories
# ---------------------------------------------------------------------------------------------
def _usage(usage: Any, prompt_key: str, completion_key: str) -> dict[str, Any]:
    if usage is None:
        return {}
    return {"prompt_tokens": getattr(usage, prompt_key, 0) or 0, "completion_tokens": getattr(usage, completion_key, 0) or 0}


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return float(value) / 1000.0
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):  # an HTTP date; the exponential backoff is good enough
        return None


def _error_code(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    return err.get("code") if isinstance(err, dict) else None


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc) or type(exc).__name__


_API_OPTIONS = {
    "max_concurrency", "timeout", "max_retries", "backoff_base", "backoff_max", "prices", "jitter_seed", "api_key_env",
}  # fmt: skip
_OPENAI_OPTIONS = _API_OPTIONS | {"use_logprobs", "top_logprobs", "max_tokens_field", "extra_body", "key_required"}


def _options(spec: ModelSpec, name: str, allowed: set[str]) -> dict[str, Any]:
    options = dict(spec.options)
    if any("key" in k and k not in ("api_key_env", "key_required") for k in options):
        raise ValueError(
            f"model {name!r}: API keys are not accepted in configs; put the key in an environment "
            "variable and name it with options.api_key_env"
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"model {name!r} ({spec.backend}): unknown option(s) {unknown}; known: {sorted(allowed)}")
    return options


def build_openai(spec: ModelSpec, name: str) -> Generator:
    if not spec.model:
        raise ValueError(f"model {name!r} (openai): set model:, e.g. gpt-4o-mini")
    return OpenAIGenerator(spec.model, base_url=spec.base_url, name=name, **_options(spec, name, _OPENAI_OPTIONS))


def build_openai_compatible(spec: ModelSpec, name: str) -> Generator:
    if not spec.base_url:
        raise ValueError(f"model {name!r} (openai_compatible): set base_url:, e.g. http://127.0.0.1:8000/v1")
    return OpenAICompatibleGenerator(spec.model, base_url=spec.base_url, name=name, **_options(spec, name, _OPENAI_OPTIONS))


def build_anthropic(spec: ModelSpec, name: str) -> Generator:
    if not spec.model:
        raise ValueError(f"model {name!r} (anthropic): set model:, e.g. claude-sonnet-4-5")
    return AnthropicGenerator(spec.model, base_url=spec.base_url, name=name, **_options(spec, name, _API_OPTIONS | {"send_sampling"}))
