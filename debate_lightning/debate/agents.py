"""Debaters and judges. Agents build prompts and interpret outputs; the engine batches the calls.

Every method takes MANY requests at once so the engine can make one model call per turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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


def generate_scratchpads(
    generator: Generator, chats: Sequence, pads: Sequence, params: SamplingParams
) -> list[Generation | None]:
    """Scratchpad text for each chat whose ``pads`` entry (a ``Scratchpad``) is set, else None.

    One generate call per distinct token budget (one in practice: a turn's formats share it),
    so every scratchpad of a turn is batched as its speeches are.
    """
    out: list[Generation | None] = [None] * len(chats)
    for budget in sorted({p.max_new_tokens for p in pads if p is not None}):
        idx = [i for i, p in enumerate(pads) if p is not None and p.max_new_tokens == budget]
        gens = generator.generate([chats[i] for i in idx], replace(params, max_new_tokens=budget))
        for i, g in zip(idx, gens):
            out[i] = g
    return out


@dataclass
class Debater:
    """Writes speeches with one generator and one set of sampling parameters.

    In a format with ``scratchpad.debater`` it first writes private notes for every request (one
    batched call), then each speech conditioned on its own notes (a second batched call).
    """

    name: str
    generator: Generator
    params: SamplingParams = field(default_factory=SamplingParams)

    def chats(self, requests: Sequence[SpeechRequest], notes: Sequence[Generation | None] = ()):
        notes = list(notes) or [None] * len(requests)
        return [
            r.transcript.debater_chat(r.side, prompts_for(r.transcript.format), None if n is None else n.text)
            for r, n in zip(requests, notes)
        ]

    def scratchpads(self, requests: Sequence[SpeechRequest]) -> list[Generation | None]:
        """Private notes per request whose format asks for them (None elsewhere), batched."""
        pads = [p if (p := r.transcript.format.scratchpad) is not None and p.debater else None for r in requests]
        if not any(pads):
            return [None] * len(requests)
        chats = [r.transcript.debater_scratchpad_chat(r.side, prompts_for(r.transcript.format)) for r in requests]
        return generate_scratchpads(self.generator, chats, pads, self.params)

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        """One speech per request, from ONE batched generate call (two with scratchpads)."""
        if not requests:
            return []
        start = time.perf_counter()
        notes = self.scratchpads(requests)
        gens = self.generator.generate(self.chats(requests, notes), self.params)
        per = (time.perf_counter() - start) / len(requests)
        speeches = [_speech(r, g, per) for r, g in zip(requests, gens)]
        for speech, note in zip(speeches, notes):
            if note is not None:
                speech.scratchpad = note.text
                if note.error:  # the speech was written without its notes: the round fails, named
                    speech.error = f"scratchpad: {note.error}"
        return speeches


@dataclass
class BestOfNDebater(Debater):
    """Samples ``n`` candidates per speech, keeps the one the judge likes best for its side.

    A candidate's score is the judge's probability for the speaker's side on the transcript with
    that candidate appended. The losers are kept on the speech (text and score) for preference data.
    """

    n: int = 4
    judge: Judge | None = None

    def sample_candidates(self, requests: Sequence[SpeechRequest]) -> tuple[list[SpeechRequest], list[Speech]]:
        """``n`` candidates per request in one generate call: (each candidate's request, the candidates)."""
        if self.judge is None:
            raise ValueError(f"best-of-N debater {self.name!r} needs a judge to score its candidates")
        start = time.perf_counter()
        flat_reqs = [r for r in requests for _ in range(self.n)]
        gens = self.generator.generate([c for c in self.chats(requests) for _ in range(self.n)], self.params)
        per = (time.perf_counter() - start) / len(flat_reqs)
        return flat_reqs, [_speech(r, g, per) for r, g in zip(flat_reqs, gens)]

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        if not requests:
            return []
        flat_reqs, candidates = self.sample_candidates(requests)
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
    In a format with ``scratchpad.judge`` the judge first writes its reasoning (greedy, one
    batched call for every transcript and order) and the answer is scored after it; the texts
    are kept in ``last_reasoning`` (per transcript, one per order).
    """

    generator: Generator
    both_orders: bool = True
    choices: tuple[str, str] = ("A", "B")
    verdict_params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=16, temperature=0.0))
    name: str | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.generator.name
        self.last_errors: list[str | None] = []
        self.last_reasoning: list[list[str]] = []

    def p_a(self, transcripts: Sequence[Transcript]) -> list[float]:
        """P(position 0 is correct) per transcript; NaN where no verdict could be had."""
        return [sum(ps) / len(ps) for ps in self.p_a_orders(transcripts)]

    def p_a_orders(self, transcripts: Sequence[Transcript]) -> list[list[float]]:
        """P(position 0) per transcript, once per presentation order (1 or 2 values)."""
        swaps = (False, True) if self.both_orders else (False,)
        flat = [(t, s) for t in transcripts for s in swaps]
        pads = [p if (p := t.format.scratchpad) is not None and p.judge else None for t, _ in flat]
        reasoning: list[Generation | None] = [None] * len(flat)
        if any(pads):
            chats = [t.judge_reasoning_chat(prompts_for(t.format), swap=s) for t, s in flat]
            reasoning = generate_scratchpads(self.generator, chats, pads, replace(self.verdict_params, stop=[]))
        chats = [t.judge_chat(prompts_for(t.format), swap=s, reasoning=None if r is None else r.text)
                 for (t, s), r in zip(flat, reasoning)]
        probs, errors = self._first_choice_probs(chats)
        for i, r in enumerate(reasoning):
            if r is not None and r.error:  # a verdict after failed reasoning is not the one asked for
                probs[i], errors[i] = float("nan"), f"judge reasoning: {r.error}"
        k = len(swaps)
        self.last_reasoning = [[r.text for r in reasoning[i * k : (i + 1) * k] if r is not None]
                               for i in range(len(transcripts))]
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
