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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Chat = list[dict[str, str]]


class ScoringUnsupported(NotImplementedError):
    """The backend cannot return log-probabilities (e.g. the Anthropic API)."""


class GenerationFailed(RuntimeError):
    """A request that still failed after its retries; the engine records it on the round."""


@dataclass
class SamplingParams:
    """How to sample one speech. ``min_new_tokens == max_new_tokens`` gives fixed-length output.

    ``repetition_penalty`` (1.0: off) divides the positive logits and multiplies the negative ones
    of every token already in the prompt or the text so far (Keskar et al. 2019, CTRL, eq. 3; the
    transformers and vLLM definition). The hf backend applies it with stock ``generate`` (the CPU
    engine's decode loop has no such step, so a call with a penalty skips it); OpenAI-compatible
    servers get it as vLLM's ``repetition_penalty`` field; the Anthropic API has none and refuses it.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 is off), got {self.repetition_penalty}")

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


TopLogprobs = list[tuple[int, float]]  # (token id, log-prob), best first


class LocalGenerator(Generator):
    """A generator over local weights: the token-level calls that training and ``serve`` use.

    Rollouts need the exact token ids a policy sampled and the prompts it sampled them from;
    ``serve`` needs token log-probs. Everything they do to a local model goes through these
    calls, so neither knows how a backend batches, pads or caches.

    Attributes:
        model: the torch module (a training policy, when the generator wraps a live one).
        tokenizer: its tokenizer.
        eos_ids: the ids that end the assistant's turn.
    """

    model: Any
    tokenizer: Any
    eos_ids: list[int]

    @abstractmethod
    def chat_ids(self, chat: Chat) -> list[int]:
        """The chat rendered with the model's template, ending with the assistant prompt."""

    @abstractmethod
    def text_ids(self, text: str) -> list[int]:
        """A continuation's token ids (no special tokens)."""

    @abstractmethod
    def cacheable_prefix(self, chat: Chat, ids: Sequence[int]) -> int:
        """How many leading ``ids`` (the chat's system message) may be served from the prefix
        cache; 0 when there is no cache or no clean prefix."""

    @abstractmethod
    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                     prefix_lens: Sequence[int] | None = None) -> list[Generation]:
        """One continuation per tokenised prompt (``Generation.token_ids``: the sampled ids, EOS
        excluded). ``prefix_lens[i]`` leading tokens of prompt i may come from the prefix cache."""

    @abstractmethod
    def score_ids(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[float]:
        """Summed teacher-forced log-probs of each continuation after its prompt."""

    @abstractmethod
    def token_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                       top_k: int = 0) -> list[list[tuple[int, float, TopLogprobs]]]:
        """Per continuation token: (id, its log-prob, the ``top_k`` most likely tokens there)."""

    @abstractmethod
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], top_k: int = 1) -> list[TopLogprobs]:
        """The ``top_k`` most likely next tokens after each prompt, best first (raw model log-probs)."""

    @abstractmethod
    def hidden_states(self, prompts: Sequence[Sequence[int]], layers: Sequence[int]) -> torch.Tensor:
        """The hidden states at the LAST position of each prompt: a float32 CPU tensor
        [len(prompts), len(layers), hidden_size], from one batched forward per chunk (no grad, no
        generation). ``layers`` index ``outputs.hidden_states`` (``num_layers + 1`` entries: 0 the
        embeddings, -1 the last layer after the final norm); out of range is a ValueError naming
        the model's layer count. For a judge chat rendered by ``chat_ids`` the last position is
        where the verdict letter would be emitted (the probe judges read it there)."""

    @property
    def num_layers(self) -> int:
        """Decoder layers of ``model`` (``hidden_states`` indexes ``num_layers + 1`` states)."""
        return int(_text_config(self.model).num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(_text_config(self.model).hidden_size)

    @abstractmethod
    def clear_cache(self) -> None:
        """Forget every cached prefix (after the weights changed)."""


def _text_config(model: Any) -> Any:
    """The language model's config (a multimodal config keeps it in ``text_config``)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_indices(layers: Sequence[int], num_layers: int) -> list[int]:
    """``layers`` as non-negative indices into ``num_layers + 1`` hidden states (negative ones count
    from the top: -1 is the last layer); one out of range is a ValueError naming the layer count."""
    states = num_layers + 1
    bad = [layer for layer in layers if not -states <= layer < states]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)}: the model has {num_layers} layers, so a layer index is one of "
                         f"-{states}..{num_layers} (0 = the embeddings, -1 = the last layer)"
                         + ("" if layers else "; give at least one"))
    return [layer % states for layer in layers]


def normalize(logprobs: Sequence[float]) -> list[float]:
    """Softmax of log-probabilities over the given options (a log-sum-exp, numerically stable)."""
    m = max(logprobs)
    if m == -math.inf:
        return [1.0 / len(logprobs)] * len(logprobs)
    exps = [math.exp(lp - m) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]
