"""The OpenAI chat-completions wire format: requests checked field by field, answers, errors."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from debate_lightning.models.base import Chat, Generation, SamplingParams

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
