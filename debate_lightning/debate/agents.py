"""Debaters and judges. Agents build prompts and interpret outputs; the engine batches the calls.

Every method takes MANY requests at once so the engine can make one model call per turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from debate_lightning.debate.formats import Format
from debate_lightning.debate.quotes import QuoteChecker
from debate_lightning.debate.transcript import Speech, Transcript
from debate_lightning.debate.verdict import parse_verdict
from debate_lightning.models.base import Generation, Generator, SamplingParams, ScoringUnsupported, normalize
from debate_lightning.prompts.render import PromptSet, load_prompt_set

_PROMPT_CACHE: dict[str, PromptSet] = {}


def prompts_for(fmt: Format) -> PromptSet:
    key = fmt.prompts
    if key not in _PROMPT_CACHE:
        _PROMPT_CACHE[key] = load_prompt_set(key)
    return _PROMPT_CACHE[key]


@dataclass
class SpeechRequest:
    """A speech to write: side ``side`` of ``transcript`` speaks at step ``step``."""

    transcript: Transcript
    side: int
    step: int


def _speech(req: SpeechRequest, gen: Generation, seconds: float) -> Speech:
    checker = QuoteChecker(req.transcript.question.story)
    return Speech(
        side=req.side,
        step=req.step,
        text=gen.text,
        quotes=checker.check_speech(gen.text) if gen.error is None else [],
        num_tokens=gen.num_tokens,
        finished=gen.finished,
        seconds=seconds,
        error=gen.error,
    )


@dataclass
class Debater:
    """Writes speeches with one generator and one set of sampling parameters."""

    name: str
    generator: Generator
    params: SamplingParams = field(default_factory=SamplingParams)

    def chats(self, requests: Sequence[SpeechRequest]):
        return [r.transcript.debater_chat(r.side, prompts_for(r.transcript.format)) for r in requests]

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        """One speech per request, from ONE batched generate call."""
        if not requests:
            return []
        start = time.perf_counter()
        gens = self.generator.generate(self.chats(requests), self.params)
        per = (time.perf_counter() - start) / len(requests)
        return [_speech(r, g, per) for r, g in zip(requests, gens)]


@dataclass
class BestOfNDebater(Debater):
    """Samples ``n`` candidates per speech, keeps the one the judge likes best for its side.

    A candidate's score is the judge's probability for the speaker's side on the transcript with
    that candidate appended. The losers are kept on the speech (text and score) for preference data.
    """

    n: int = 4
    judge: Judge | None = None

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        if not requests:
            return []
        if self.judge is None:
            raise ValueError(f"BestOfNDebater {self.name!r} needs a judge to score its candidates")
        start = time.perf_counter()
        chats = self.chats(requests)
        flat_reqs = [r for r in requests for _ in range(self.n)]
        gens = self.generator.generate([c for c in chats for _ in range(self.n)], self.params)
        per = (time.perf_counter() - start) / len(flat_reqs)
        candidates = [_speech(r, g, per) for r, g in zip(flat_reqs, gens)]
        trial = [r.transcript.with_speech(c) for r, c in zip(flat_reqs, candidates)]
        p_a = self.judge.p_a(trial)
        scores = [p if r.side == 0 else 1.0 - p for r, p in zip(flat_reqs, p_a)]
        speeches = []
        for i in range(len(requests)):
            group = list(range(i * self.n, (i + 1) * self.n))
            best = max(group, key=lambda j: -1.0 if math.isnan(scores[j]) else scores[j])
            speech = candidates[best]
            speech.candidates = [
                {"text": candidates[j].text, "score": scores[j], "chosen": j == best, "num_tokens": candidates[j].num_tokens}
                for j in group
            ]
            speeches.append(speech)
        return speeches


@dataclass
class Judge:
    """Gives P(answer A) for transcripts by teacher-forced scoring of the answer tokens "A"/"B".

    With ``both_orders`` each transcript is also judged with the answers presented in the other
    order, and the two probabilities for A are averaged, cancelling the judge's position bias.
    Generators without log-probabilities fall back to a sampled verdict parsed from text.
    """

    generator: Generator
    both_orders: bool = True
    choices: tuple[str, str] = ("A", "B")
    verdict_params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=16, temperature=0.0))
    name: str | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.generator.name
        self.last_errors: list[str | None] = []

    def p_a(self, transcripts: Sequence[Transcript]) -> list[float]:
        """P(position 0 is correct) per transcript; NaN where no verdict could be had."""
        return [sum(ps) / len(ps) for ps in self.p_a_orders(transcripts)]

    def p_a_orders(self, transcripts: Sequence[Transcript]) -> list[list[float]]:
        """P(position 0) per transcript, once per presentation order (1 or 2 values)."""
        swaps = (False, True) if self.both_orders else (False,)
        chats = [t.judge_chat(prompts_for(t.format), swap=s) for t in transcripts for s in swaps]
        probs, errors = self._first_choice_probs(chats)
        k = len(swaps)
        # Why a verdict is missing (e.g. the API error), per transcript, for the round's record.
        self.last_errors = ["; ".join(e for e in errors[i * k : (i + 1) * k] if e) or None for i in range(len(transcripts))]
        out = []
        for i in range(len(transcripts)):
            ps = probs[i * k : (i + 1) * k]
            # The swapped presentation calls position 0 "B": its P(A) is the probability of position 1.
            out.append([p if not s else 1.0 - p for p, s in zip(ps, swaps)])
        return out

    def _first_choice_probs(self, chats) -> tuple[list[float], list[str | None]]:
        """P(first choice) per chat, and the error behind each missing one."""
        try:
            logprobs = self.generator.choice_logprobs(chats, list(self.choices))
            errors = list(getattr(self.generator, "last_errors", None) or [])
            if len(errors) != len(chats):
                errors = [None] * len(chats)
            return [normalize(lp)[0] for lp in logprobs], errors
        except ScoringUnsupported:
            gens = self.generator.generate(chats, self.verdict_params)
            probs = [float("nan") if (p := parse_verdict(g.text)) is None else p for g in gens]
            errors = [
                g.error or (f"no verdict in judge text {g.text[:80]!r}" if p != p else None) for g, p in zip(gens, probs)
            ]
            return probs, errors
