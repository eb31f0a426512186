"""The ``Generator`` protocol: the one interface to anything that writes text or scores it.

A chat is a list of ``{"role": ..., "content": ...}`` messages. Every call takes MANY chats at
once; backends batch them (local models) or run them concurrently (APIs). ``models/`` knows
chats and token log-probabilities, never debaters or judges.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Chat = list[dict[str, str]]


class ScoringUnsupported(NotImplementedError):
    """The backend cannot return log-probabilities (e.g. the Anthropic API)."""


class GenerationFailed(RuntimeError):
    """A request that still failed after its retries; the engine records it on the round."""


@dataclass
class SamplingParams:
    """How to sample one speech. ``min_new_tokens == max_new_tokens`` gives fixed-length output."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """One sampled continuation.

    ``finished`` is True when the model ended the text itself (EOS or a stop string) rather than
    hitting ``max_new_tokens``. ``error`` is set (and ``text`` empty) when the request failed.
    ``top_logprobs`` holds, per generated token, a ``{token_text: logprob}`` dict when asked for.
    """

    text: str
    num_tokens: int = 0
    finished: bool = True
    logprob: float | None = None
    token_ids: list[int] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Generator(ABC):
    """Produces text for chats and scores continuations of chats."""

    name: str = "generator"

    @abstractmethod
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        """One continuation of the assistant turn for every chat, in order."""

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        """Teacher-forced log P(continuation | chat + assistant prompt), summed over its tokens."""
        raise ScoringUnsupported(f"{type(self).__name__} cannot score continuations")

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        """For every chat, the log-probability of each choice as the assistant's answer.

        The default scores every (chat, choice) pair in one batched ``score`` call; backends
        that can read all choices off one forward pass override it.
        """
        flat_chats = [chat for chat in chats for _ in choices]
        flat_choices = [c for _ in chats for c in choices]
        flat = self.score(flat_chats, flat_choices)
        k = len(choices)
        return [flat[i * k : (i + 1) * k] for i in range(len(chats))]

    def close(self) -> None:
        """Release resources (threads, sessions). Local models need nothing."""


def normalize(logprobs: Sequence[float]) -> list[float]:
    """Softmax of log-probabilities over the given options (a log-sum-exp, numerically stable)."""
    m = max(logprobs)
    if m == -math.inf:
        return [1.0 / len(logprobs)] * len(logprobs)
    exps = [math.exp(lp - m) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]
