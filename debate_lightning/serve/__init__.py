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

The package: ``api.py`` (OpenAI's request and response shapes), ``batcher.py`` (gathers concurrent
requests into batched model calls, on the public ``LocalGenerator`` protocol only), ``http.py``
(the stdlib HTTP server and the ``serve`` command).
"""

from __future__ import annotations

from debate_lightning.serve.api import APIError, CompletionRequest, parse_completion_request
from debate_lightning.serve.batcher import Batcher, first_token, token_logprobs
from debate_lightning.serve.http import ServeServer, make_server, serve_main

__all__ = ["APIError", "Batcher", "CompletionRequest", "ServeServer", "first_token", "make_server",
           "parse_completion_request", "serve_main", "token_logprobs"]
