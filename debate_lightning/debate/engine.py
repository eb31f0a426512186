"""Runs MANY rounds at once, turn by turn, with one batched model call per debater per turn.

At step t every active round whose format has a step t contributes its speakers' requests; the
requests are grouped by debater and each debater answers all of its requests with one
``generate`` call (which its backend splits into chunks of its maximum batch size). Speakers of
one step all see the transcript as it was before the step, so simultaneous speeches stay blind
to each other. After the last step, every round is judged in one batched scoring call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from debate_lightning.data.question import Question, stable_id
from debate_lightning.debate.agents import Debater, Judge, SpeechRequest
from debate_lightning.debate.formats import Format
from debate_lightning.debate.quotes import quote_stats
from debate_lightning.debate.transcript import Speech, Transcript


@dataclass(frozen=True)
class RoundSpec:
    """One round to play. ``debaters[side]`` names the agent on that side ('' where no one speaks)."""

    question: Question
    format: Format
    debaters: tuple[str, str]
    repeat: int = 0

    @property
    def round_id(self) -> str:
        """Stable across runs: the same question, format, debaters and repeat give the same id."""
        f = self.format
        return stable_id(self.question.uid, f.name, f.num_speeches, f.prompts, *self.debaters, self.repeat, length=16)


@dataclass
class RoundResult:
    """Everything about one played round: one JSON line in a results file."""

    round_id: str
    question: dict[str, Any]
    format: dict[str, Any]
    debaters: list[str]
    judge: str
    speeches: list[dict[str, Any]]
    p_a: float | None
    p_a_orders: list[float]
    winner: int | None
    correct_index: int
    judge_correct: bool | None
    status: str = "ok"
    error: str | None = None
    repeat: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    quote_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    judge_reasoning: list[str] = field(default_factory=list)  # per presentation order, with scratchpad.judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundResult:
        return cls(**d)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def transcript(self) -> Transcript:
        """Rebuild the transcript (for re-judging and preference data) from the saved line."""
        return Transcript(
            Question.from_dict(self.question), Format(**self.format), [Speech.from_dict(s) for s in self.speeches]
        )


def _result(
    spec: RoundSpec, transcript: Transcript, judge: Judge, probs: list[float], timings, judge_error: str | None = None,
    reasoning: list[str] | None = None,
) -> RoundResult:
    errors = [s.error for s in transcript.speeches if s.error]
    p_a = sum(probs) / len(probs) if probs else None
    if p_a is not None and p_a != p_a:  # NaN: no verdict could be read
        errors.append(f"judge gave no verdict: {judge_error}" if judge_error else "judge gave no verdict")
        p_a = None
    winner = None if p_a is None else (0 if p_a >= 0.5 else 1)
    q = transcript.question
    stats: dict[str, dict[str, int]] = {}
    for side in spec.format.sides:
        side_quotes = [quote for s in transcript.speeches if s.side == side for quote in s.quotes]
        stats[str(side)] = quote_stats(side_quotes)
    return RoundResult(
        round_id=spec.round_id,
        question=q.to_dict(),
        format=asdict(spec.format),
        debaters=list(spec.debaters),
        judge=judge.name or "",
        speeches=[s.to_dict() for s in transcript.speeches],
        p_a=p_a,
        p_a_orders=probs,
        winner=winner,
        correct_index=q.correct_index,
        judge_correct=None if winner is None else winner == q.correct_index,
        status="failed" if errors else "ok",
        error="; ".join(errors) if errors else None,
        repeat=spec.repeat,
        timings=timings,
        quote_stats=stats,
        judge_reasoning=list(reasoning or []),
    )


def play_speeches(
    specs: Sequence[RoundSpec], debaters: Mapping[str, Debater], transcripts: list[Transcript] | None = None,
    start_steps: Sequence[int] | None = None,
) -> list[Transcript]:
    """Play every step of every round (no judging); returns one transcript per spec.

    ``start_steps[i]`` continues round ``i`` from that step (its transcript already holds the
    speeches before it): rounds branched mid-way go on batched with the rest."""
    missing = {name for s in specs for side in s.format.sides if (name := s.debaters[side]) not in debaters}
    if missing:
        raise KeyError(f"rounds name debaters that are not configured: {sorted(missing)}; known: {sorted(debaters)}")
    # Only the plain Debater writes scratchpads; a subclass with its own speak (best-of-N, replay,
    # rollouts) would silently skip the notes the format asks for.
    for s in specs:
        if s.format.scratchpad is not None and s.format.scratchpad.debater:
            for side in s.format.sides:
                agent = debaters[s.debaters[side]]
                if type(agent).speak is not Debater.speak:
                    raise ValueError(f"format {s.format.name}: scratchpad.debater is on but debater "
                                     f"{agent.name!r} ({type(agent).__name__}) does not write scratchpads")
    transcripts = transcripts or [Transcript(s.question, s.format) for s in specs]
    steps = [s.format.steps() for s in specs]
    starts = list(start_steps) if start_steps is not None else [0] * len(specs)
    for t in range(min(starts, default=0), max((len(st) for st in steps), default=0)):
        by_agent: dict[str, list[SpeechRequest]] = defaultdict(list)
        for spec, tr, st, first in zip(specs, transcripts, steps, starts):
            if first <= t < len(st) and not any(s.error for s in tr.speeches):
                for side in st[t]:
                    by_agent[spec.debaters[side]].append(SpeechRequest(tr, side, t))
        # Compute every speech of the step before appending any, so simultaneous speakers are blind.
        produced = [(req, speech) for name, reqs in by_agent.items() for req, speech in zip(reqs, debaters[name].speak(reqs))]
        for req, speech in produced:
            req.transcript.speeches.append(speech)
    return transcripts


def run_rounds(
    specs: Sequence[RoundSpec],
    debaters: Mapping[str, Debater],
    judge: Judge,
    on_result: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Play and judge ``specs`` together. ``on_result`` sees each result as soon as it exists."""
    start = time.perf_counter()
    transcripts = play_speeches(specs, debaters)
    speech_seconds = time.perf_counter() - start
    results = judge_transcripts(specs, transcripts, judge, {"speeches": speech_seconds / max(len(specs), 1)})
    for r in results:
        if on_result is not None:
            on_result(r)
    return results


def judge_transcripts(
    specs: Sequence[RoundSpec], transcripts: Sequence[Transcript], judge: Judge, timings: dict[str, float] | None = None
) -> list[RoundResult]:
    """Judge finished transcripts in one batched call (also used to re-judge saved rounds)."""
    start = time.perf_counter()
    judgeable = [i for i, tr in enumerate(transcripts) if not any(s.error for s in tr.speeches)]
    probs = judge.p_a_orders([transcripts[i] for i in judgeable])
    per_round: dict[int, list[float]] = dict(zip(judgeable, probs))
    judge_errors: dict[int, str | None] = dict(zip(judgeable, judge.last_errors))
    reasoning: dict[int, list[str]] = dict(zip(judgeable, getattr(judge, "last_reasoning", None) or []))
    judge_seconds = (time.perf_counter() - start) / max(len(transcripts), 1)
    out = []
    for i, (spec, tr) in enumerate(zip(specs, transcripts)):
        t = dict(timings or {})
        t["judge"] = judge_seconds
        out.append(_result(spec, tr, judge, per_round.get(i, []), t, judge_errors.get(i), reasoning.get(i)))
    return out
