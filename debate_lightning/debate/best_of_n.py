"""Best-of-N as the original research code had it: candidates scored against opponent replies.

A plain ``BestOfNDebater`` scores each of its N candidate speeches alone: the judge's probability
for the speaker's side on the transcript cut right after the candidate. A speech that looks strong
there may collapse once the opponent answers it. With ``opponent_n = M > 0`` each candidate is
instead scored after the opponent has replied to it, M times:

    score_j(k) = P_judge(speaker's side | transcript + candidate_j + reply_k),  k = 1..M

and ``selection`` picks the speech:

* ``max``:    argmax_j mean_k score_j(k)  (the expected value against the opponent)
* ``maxmin``: argmax_j min_k  score_j(k)  (the robust choice: the best worst case)

Every candidate keeps ``score`` (the value ``selection`` ranked it by, so the chosen candidate is
the top-scored one and best-of-N preference pairs agree with the choice), ``mean_score``,
``min_score`` and ``opponent_scores``. The replies are simulations: they are never returned,
never enter the round's transcript, and never reach the opponent's real turn.

The reply is the opponent's NEXT speech in the format: the other side's first step after the
candidate's step. Where the opponent never speaks again (the last speech of a round, consultancy)
there is nothing to answer and the candidate is scored alone. Replies are sampled by ``opponent``
(a plain debater: its generator and sampling) or, when unset, by this debater's own generator and
sampling (self-play; the tournament runner has no per-request opponent to hand in). All N x M
replies of all requests are ONE ``speak`` call (one generate call), and all N x M trial transcripts
are judged in ONE ``p_a`` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from debate_lightning.debate.agents import BestOfNDebater, Debater, SpeechRequest
from debate_lightning.debate.transcript import Speech

Selection = Literal["max", "maxmin"]
SELECTIONS = ("max", "maxmin")


def reply_step(request: SpeechRequest) -> tuple[int, int] | None:
    """(opponent side, step) of the opponent's next speech after ``request``; None if there is none."""
    for t, speakers in enumerate(request.transcript.format.steps()):
        if t <= request.step:
            continue
        for side in speakers:
            if side != request.side:
                return side, t
    return None


def _value(xs: list[float], how: str) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    if not ok:
        return math.nan
    return min(ok) if how == "maxmin" else sum(ok) / len(ok)


@dataclass
class OpponentBestOfNDebater(BestOfNDebater):
    """``BestOfNDebater`` whose candidates are scored against ``opponent_n`` sampled opponent
    replies and chosen by ``selection`` (``max`` of the mean, or ``maxmin``); see the module doc.

    With ``opponent_n = 0`` and ``selection = max`` it behaves exactly like ``BestOfNDebater``.
    """

    opponent_n: int = 0
    selection: Selection = "max"
    opponent: Debater | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"best-of-N debater {self.name!r}: best_of_n must be >= 1, got {self.n}")
        if self.opponent_n < 0:
            raise ValueError(f"best-of-N debater {self.name!r}: opponent_n must be >= 0, got {self.opponent_n}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"best-of-N debater {self.name!r}: selection must be one of {SELECTIONS}, got {self.selection!r}")

    def _replier(self) -> Debater:
        src = self.opponent or self
        # A plain debater: the simulated reply is one sample, never a best-of-N search of its own.
        return Debater(src.name, src.generator, src.params)

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        if not requests:
            return []
        flat, candidates = self.sample_candidates(requests)
        trials = [r.transcript.with_speech(c) for r, c in zip(flat, candidates)]

        # Which candidates get opponent replies: a reply step exists, the candidate did not fail.
        m = self.opponent_n
        replied = [j for j, r in enumerate(flat) if m > 0 and candidates[j].error is None and reply_step(r)]
        reply_reqs = []
        for j in replied:
            side, t = reply_step(flat[j])  # type: ignore[misc]
            reply_reqs += [SpeechRequest(trials[j], side, t)] * m
        replies = self._replier().speak(reply_reqs) if reply_reqs else []
        has_replies = set(replied)
        alone = [j for j in range(len(flat)) if j not in has_replies]
        judged = [trials[j] for j in alone] + [
            trials[j].with_speech(reply) for k, j in enumerate(replied) for reply in replies[k * m : (k + 1) * m]
        ]
        p_a = self.judge.p_a(judged) if judged else []

        def own(p: float, side: int) -> float:
            return p if side == 0 else 1.0 - p

        per_candidate: dict[int, list[float]] = {j: [own(p_a[i], flat[j].side)] for i, j in enumerate(alone)}
        base = len(alone)
        for k, j in enumerate(replied):
            scores = p_a[base + k * m : base + (k + 1) * m]
            # A failed reply says nothing about the candidate: it is left out, not counted as a loss.
            per_candidate[j] = [own(p, flat[j].side) if replies[k * m + i].error is None else math.nan for i, p in enumerate(scores)]

        speeches = []
        for i in range(len(requests)):
            group = range(i * self.n, (i + 1) * self.n)
            value = {j: _value(per_candidate[j], self.selection) for j in group}
            best = max(group, key=lambda j: -1.0 if math.isnan(value[j]) else value[j])
            speech = candidates[best]
            speech.candidates = [
                {
                    "text": candidates[j].text,
                    "score": value[j],
                    "mean_score": _value(per_candidate[j], "max"),
                    "min_score": _value(per_candidate[j], "maxmin"),
                    "opponent_scores": per_candidate[j] if j in has_replies else [],
                    "chosen": j == best,
                    "num_tokens": candidates[j].num_tokens,
                }
                for j in group
            ]
            speeches.append(speech)
        return speeches
