"""Scripted generators: no model, fully reproducible. For tests, baselines and replays.

- ``RandomGenerator``: random words and random (seeded) answer scores; a chance-level baseline.
- ``DeterministicGenerator``: a fixed speech template and fixed choice log-probs.
- ``RepetitiveGenerator`` (backend ``repetitive``): as a judge, P(choice) from how often each
  choice letter stands alone in the last speech of the judge's chat; as a debater, it states the
  answer it defends and then repeats it. A letter-counting baseline for open debates.
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
import re
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


# How the built-in prompt sets start a speech in the judge's transcript ("Debater A: ...",
# "Consultant: ..."); a line that starts so begins a new speech.
SPEAKER = r"^(?:Debater|Consultant)\b[^\n:]{0,20}:"


def last_speech(chat: Chat, speaker: str = SPEAKER) -> str:
    """The last speech of a judge chat as the prompt sets render it, from the last user message
    that holds speeches (with a judge scratchpad the decision comes as a later message): the last
    ``<speech ...>...</speech>`` block where the set wraps speeches so (``open_debate``); otherwise
    the text after the last speaker line (``speaker``, a regex), without the message's final
    paragraph (the decision or reasoning request, which names every letter). '' if none."""
    for content in reversed([m["content"] for m in chat if m.get("role") == "user"]):
        blocks = re.findall(r"<speech\b[^>]*>(.*?)</speech>", content, flags=re.DOTALL)
        if blocks:
            return blocks[-1].strip()
        if "\n\n" in content:
            body = content.rsplit("\n\n", 1)[0]
            starts = list(re.finditer(speaker, body, flags=re.MULTILINE))
            if starts:
                return body[starts[-1].end():].strip()
    return ""


def letter_counts(text: str, choices: Sequence[str]) -> list[int]:
    """How often each choice stands alone in ``text`` (``A`` in "answer A." but not in "Alice")."""
    return [len(re.findall(rf"(?<![A-Za-z0-9]){re.escape(c)}(?![A-Za-z0-9])", text)) for c in choices]


class RepetitiveGenerator(Generator):
    """A letter-counting scripted model (the original research code's ``repetitive`` baseline).

    Judge (``choice_logprobs``): P(choice i) = (n_i + 1) / (sum n + k), where n_i counts choice
    i standing alone in the last speech of the chat (``last_speech``). More A's than B's gives
    P(A) > 0.5; a tie, or no speech, gives 0.5 exactly; never 0 or 1. It reads nothing else, so
    a speech naming its answer by letter wins it; the first presentation order only (the
    swapped order relabels the answers but not the letters inside the speeches).

    Debater (``generate``): with no earlier message of its own it says
    "I defend answer {answer}."; afterwards it repeats the letter its first message named,
    ``repeats`` times.
    """

    def __init__(self, answer: str = "A", repeats: int = 3, speaker: str = SPEAKER, name: str = "repetitive"):
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"model {name!r} (repetitive): option answer must be a letter such as 'A', got {answer!r}")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"model {name!r} (repetitive): option repeats must be an integer >= 1, got {repeats!r}")
        try:
            re.compile(speaker)
        except re.error as e:
            raise ValueError(f"model {name!r} (repetitive): option speaker is not a regex: {e}") from None
        self.answer, self.repeats, self.speaker, self.name = answer.strip(), repeats, speaker, name

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        out = []
        for chat in chats:
            own = [m["content"] for m in chat if m.get("role") == "assistant"]
            if not own:
                text = f"I defend answer {self.answer}."
            else:
                found = re.search(r"answer\s+([A-Z])\b", own[0])
                letter = found.group(1) if found else self.answer
                text = " ".join([f"Answer {letter} is correct."] * self.repeats)
            out.append(Generation(text, num_tokens=len(text.split())))
        return out

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        out = []
        for chat in chats:
            counts = letter_counts(last_speech(chat, self.speaker), choices)
            total = sum(counts) + len(choices)
            out.append([math.log((n + 1) / total) for n in counts])
        return out


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


def build_repetitive(spec: ModelSpec, name: str) -> Generator:
    known = {"answer", "repeats", "speaker"}
    unknown = sorted(set(spec.options) - known)
    if unknown:
        raise ValueError(f"model {name!r} (backend repetitive): unknown options {unknown}; known: {sorted(known)}")
    return RepetitiveGenerator(name=name, **spec.options)


def build_replay(spec: ModelSpec, name: str) -> Generator:
    return ReplayGenerator(spec.path, name=name)


def build_speech_replay(spec: ModelSpec, name: str) -> Generator:
    raise ValueError(
        f"model {name!r}: backend {spec.backend!r} replays recorded debater speeches by question, side and speech "
        "number, which a chat does not carry; only a tournament debater can use it (not a judge, policy or server)"
    )
