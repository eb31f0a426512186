"""The debater that plays rollouts: it samples, keeps the judge's favourite, and records tokens.

``play_rollout`` plays one round per question through the batched engine with a
``RolloutDebater`` on every policy seat. The debater asks the generator for ``n`` candidates per
speech in one call and, with a judge, scores each (P(own side) with that speech appended) so the
best continues the round (best-of-N). Unlike the tournament's ``BestOfNDebater`` it records what
training needs: the exact token ids sampled, and whether each candidate ended by itself.

It uses only the models floor's public ``LocalGenerator`` calls (``chat_ids``,
``cacheable_prefix``, ``generate_ids``, ``tokenizer``), so any local backend can play rollouts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from debate_lightning.data.question import Question
from debate_lightning.debate.agents import Debater, Judge, SpeechRequest
from debate_lightning.debate.engine import RoundSpec, judge_transcripts, play_speeches
from debate_lightning.debate.formats import Format
from debate_lightning.debate.quotes import QuoteChecker
from debate_lightning.debate.transcript import Speech, Transcript
from debate_lightning.models.base import LocalGenerator, SamplingParams
from debate_lightning.training.online.records import Candidate, Rollout, SpeechSample

POLICY = "policy"


@dataclass
class RolloutDebater(Debater):
    """Samples ``n`` candidates per speech in one call; with a judge keeps the best (best-of-N)."""

    n: int = 2
    judge: Judge | None = None
    samples: list[SpeechSample] = field(default_factory=list)
    round_of: dict[int, int] = field(default_factory=dict)  # id(transcript) -> round index

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        if not requests:
            return []
        gen = self.generator
        if not isinstance(gen, LocalGenerator):
            raise TypeError(f"rollouts need a local model that returns token ids; debater {self.name!r} has "
                            f"a {type(gen).__name__}")
        chats = self.chats(requests)
        prompts = [gen.chat_ids(c) for c in chats]
        # the story sits in the system message: its KV is computed once per story, not per sample
        prefix = [gen.cacheable_prefix(c, p) for c, p in zip(chats, prompts)]
        start = time.perf_counter()
        gens = gen.generate_ids([p for p in prompts for _ in range(self.n)], self.params,
                                [n for n in prefix for _ in range(self.n)] if any(prefix) else None)
        per = (time.perf_counter() - start) / len(gens)
        eos = gen.tokenizer.eos_token_id
        flat_reqs = [r for r in requests for _ in range(self.n)]
        speeches = []
        for r, g in zip(flat_reqs, gens):
            checker = QuoteChecker(r.transcript.question.story)
            speeches.append(Speech(side=r.side, step=r.step, text=g.text, quotes=checker.check_speech(g.text),
                                   num_tokens=g.num_tokens, finished=g.finished, seconds=per))
        scores: list[float | None] = [None] * len(gens)
        if self.n > 1 and self.judge is not None:
            p_a = self.judge.p_a([r.transcript.with_speech(s) for r, s in zip(flat_reqs, speeches)])
            scores = [p if r.side == 0 else 1.0 - p for r, p in zip(flat_reqs, p_a)]
        out = []
        for i, req in enumerate(requests):
            group = range(i * self.n, (i + 1) * self.n)
            cands = [Candidate(list(gens[j].token_ids or []) + ([eos] if gens[j].finished else []), gens[j].text,
                               gens[j].finished, scores[j], speeches[j]) for j in group]
            ranked = [(-1.0 if c.score is None or math.isnan(c.score) else c.score) for c in cands]
            best = max(range(len(cands)), key=lambda k: ranked[k])
            speech = speeches[group[best]]
            if self.n > 1:
                speech.candidates = [{"text": c.text, "score": c.score, "chosen": k == best,
                                      "num_tokens": len(c.response_ids), "finished": c.finished}
                                     for k, c in enumerate(cands)]
            own = sum(1 for s in req.transcript.speeches if s.side == req.side)
            self.samples.append(SpeechSample(self.round_of.get(id(req.transcript), -1), req.side, req.step, own + 1,
                                             prompts[i], cands, best, len(req.transcript.speeches)))
            out.append(speech)
        return out


def play_rollout(
    questions: Sequence[Question],
    fmt: Format | Sequence[Format],
    generator: LocalGenerator,
    judge: Judge,
    params: SamplingParams,
    num_candidates: int = 2,
    epoch: int = 0,
    seed: int = 0,
    candidate_reward: Literal["immediate", "final"] = "immediate",
) -> Rollout:
    """Play one round per question (formats may differ per question: ``fmt`` or a list).

    ``candidate_reward`` is how each candidate speech is scored when ``num_candidates > 1``:
    ``immediate``: the judge's P(own side) right after it, and the best continues the round
    (best-of-N); ``final``: P(own side) at the end of a round continued from it. The round goes on
    with the first candidate (a plain sample), and every other candidate's round is continued, one
    speech per turn, batched with all the others (``continue_candidates``); one judge call then
    scores the rounds and all the continuations.
    """
    if candidate_reward not in ("immediate", "final"):
        raise ValueError(f"candidate_reward: choose 'immediate' or 'final', got {candidate_reward!r}")
    fmts = list(fmt) if isinstance(fmt, (list, tuple)) else [fmt] * len(questions)
    specs = [RoundSpec(q, f, (POLICY, POLICY) if f.kind != "consultancy" else
                       ((POLICY, "") if f.consultant_side == 0 else ("", POLICY)), repeat=epoch)
             for q, f in zip(questions, fmts)]
    transcripts = [Transcript(s.question, s.format) for s in specs]
    final = candidate_reward == "final" and num_candidates > 1
    debater = RolloutDebater(POLICY, generator, params, n=num_candidates, judge=None if final else judge,
                             round_of={id(t): i for i, t in enumerate(transcripts)})
    start = time.perf_counter()
    play_speeches(specs, {POLICY: debater}, transcripts)
    if not final:
        results = judge_transcripts(specs, transcripts, judge)
        return Rollout(epoch, results, debater.samples, time.perf_counter() - start, seed)
    branches = continue_candidates(specs, transcripts, debater.samples,
                                   RolloutDebater(POLICY, generator, params, n=1))
    judged = judge_transcripts([*specs, *(b[2] for b in branches)], [*transcripts, *(b[3] for b in branches)], judge)
    results, rest = judged[: len(specs)], judged[len(specs):]
    rollout = Rollout(epoch, results, debater.samples, 0.0, seed)
    for sample in debater.samples:
        sample.candidates[sample.chosen].score = rollout.p_side(sample.round_index, sample.side)
    for (sample, k, _, _), result in zip(branches, rest):
        p_a = result.p_a if result.ok else None
        sample.candidates[k].score = None if p_a is None else (p_a if sample.side == 0 else 1.0 - p_a)
    for sample in debater.samples:  # the saved rounds show every candidate's final score
        speech = next(d for d in results[sample.round_index].speeches
                      if d["step"] == sample.step and d["side"] == sample.side)
        for d, c in zip(speech["candidates"], sample.candidates):
            d["score"] = c.score
    rollout.seconds = time.perf_counter() - start
    return rollout


def continue_candidates(
    specs: Sequence[RoundSpec], transcripts: Sequence[Transcript], samples: Sequence[SpeechSample], debater: Debater
) -> list[tuple[SpeechSample, int, RoundSpec, Transcript]]:
    """Continue the round of every candidate that the round did not go on with, to its end.

    A branch holds the round's speeches before the candidate's turn, the speeches of the other
    sides in that same turn (simultaneous speakers did not see it), and the candidate; ``debater``
    then plays the remaining turns of every branch together (one batched call per turn). Returns
    (sample, candidate index, spec, finished transcript) per branch, unjudged.
    """
    branches, starts = [], []
    for sample in samples:
        main = transcripts[sample.round_index]
        before = main.speeches[: sample.prefix_len]
        same_turn = [s for s in main.speeches[sample.prefix_len:] if s.step == sample.step]
        for k, cand in enumerate(sample.candidates):
            if k == sample.chosen or cand.speech is None:
                continue
            turn = [cand.speech if s.side == sample.side else s for s in same_turn]
            branches.append((sample, k, specs[sample.round_index], Transcript(main.question, main.format, [*before, *turn])))
            starts.append(sample.step + 1)
    if branches:
        play_speeches([b[2] for b in branches], {POLICY: debater}, [b[3] for b in branches], starts)
    return branches
