"""Scripted generators: no model, fully reproducible. For tests, baselines and replays.

- ``RandomGenerator``: random words and random (seeded) answer scores; a chance-level baseline.
- ``DeterministicGenerator``: a fixed speech template and fixed choice log-probs.
- ``RecordingGenerator`` wraps any generator and appends every (chat, text) it produces to a
  JSONL recording; ``ReplayGenerator`` plays a recording back, answering the same chat with
  the same text, so a saved run can be re-judged or re-analysed without regenerating speech.
- ``human_replay`` and ``offline`` (recorded human debates, one debater of an earlier run) are
  listed in the registry but built as debaters by the debate room (``debate/replay.py``): a chat
  does not say which question, side and speech it asks for. ``build_speech_replay`` refuses them
  anywhere else (as a judge, a policy, a served model) with that reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from debate_lightning.data.question import DataError, iter_jsonl
from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams
from debate_lightning.models.spec import ModelSpec

WORDS = (
    "the story says clearly that this answer is right because the text shows it and my opponent is wrong "
    "about what happened when they met at the station"
).split()


def chat_key(chat: Chat) -> str:
    return hashlib.sha1(json.dumps(chat, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RandomGenerator(Generator):
    def __init__(self, seed: int = 0, words: int = 20, name: str = "random"):
        self.rng = random.Random(seed)
        self.words, self.name = words, name

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        n = min(self.words, params.max_new_tokens)
        return [
            Generation(" ".join(self.rng.choice(WORDS) for _ in range(n)), num_tokens=n, finished=False) for _ in chats
        ]

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        return [math.log(self.rng.uniform(0.01, 1.0)) for _ in chats]


class DeterministicGenerator(Generator):
    """Always the same speech (``template`` may use ``{i}``, the call-wide index) and scores.

    ``choice_logprobs`` returns ``logprobs`` for choices in order (default: prefers the first).
    """

    def __init__(self, template: str = "I am right.", logprobs: Sequence[float] = (-0.5, -1.5), name: str = "deterministic"):
        self.template, self.logprobs, self.name = template, list(logprobs), name
        self.calls: list[int] = []  # batch sizes of generate calls, for tests of batching

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        self.calls.append(len(chats))
        return [Generation(self.template.format(i=i), num_tokens=len(self.template.split())) for i in range(len(chats))]

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        return [[self.logprobs[i % len(self.logprobs)] for i in range(len(choices))] for _ in chats]

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        return [self.logprobs[0] for _ in chats]


class RecordingGenerator(Generator):
    """Passes calls to ``inner`` and appends each generated (chat, text) to ``path``."""

    def __init__(self, inner: Generator, path: str | Path):
        self.inner, self.path, self.name = inner, Path(path), inner.name

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        gens = self.inner.generate(chats, params)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for chat, gen in zip(chats, gens):
                if gen.error is None:
                    f.write(json.dumps({"chat": chat, "text": gen.text, "num_tokens": gen.num_tokens}) + "\n")
        return gens

    def score(self, chats, continuations):
        return self.inner.score(chats, continuations)

    def choice_logprobs(self, chats, choices):
        return self.inner.choice_logprobs(chats, choices)


class ReplayGenerator(Generator):
    """Answers each chat with the text recorded for it; an unknown chat is a failed generation."""

    def __init__(self, path: str | Path, name: str = "replay"):
        self.path, self.name = Path(path), name
        self.recorded: dict[str, list[dict]] = {}
        if not self.path.is_file():
            raise FileNotFoundError(f"replay recording {self.path} does not exist")
        for n, rec in iter_jsonl(self.path):
            for key in ("chat", "text"):
                if key not in rec:
                    raise DataError(self.path, n, key, "missing")
            self.recorded.setdefault(chat_key(rec["chat"]), []).append(rec)
        self._served: dict[str, int] = {}

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        out = []
        for chat in chats:
            key = chat_key(chat)
            recs = self.recorded.get(key)
            if not recs:
                out.append(Generation("", finished=False, error=f"replay {self.path}: no recorded speech for this prompt"))
                continue
            # The same prompt asked again (best-of-N) gets the next recorded answer, cycling.
            i = self._served.get(key, 0)
            self._served[key] = i + 1
            rec = recs[i % len(recs)]
            out.append(Generation(rec["text"], num_tokens=rec.get("num_tokens", 0)))
        return out


def build_random(spec: ModelSpec, name: str) -> Generator:
    return RandomGenerator(name=name, **spec.options)


def build_deterministic(spec: ModelSpec, name: str) -> Generator:
    return DeterministicGenerator(name=name, **spec.options)


def build_replay(spec: ModelSpec, name: str) -> Generator:
    return ReplayGenerator(spec.path, name=name)


def build_speech_replay(spec: ModelSpec, name: str) -> Generator:
    raise ValueError(
        f"model {name!r}: backend {spec.backend!r} replays recorded debater speeches by question, side and speech "
        "number, which a chat does not carry; only a tournament debater can use it (not a judge, policy or server)"
    )
