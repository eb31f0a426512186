"""What a rollout records, and the training examples online objectives make from it.

A ``Rollout`` is one epoch's rounds: the judged ``RoundResult``s plus, for every speech, each
sampled ``Candidate`` (the exact token ids the policy produced) in a ``SpeechSample``. Each
objective reads the examples it needs off it:

- ``preference_pairs``: the judge's best candidate against its worst, per speech (online DPO);
- ``trajectories``: the played speech with the final verdict as reward (PPO);
- ``candidate_groups``: every candidate of a speech as one group with group-relative advantages (GRPO).

Plain dataclasses and lists of ints: nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.transcript import Speech
from debate_lightning.training.losses import group_advantages


@dataclass
class Candidate:
    """One sampled speech: exactly the tokens the policy produced (plus EOS when it stopped)."""

    response_ids: list[int]
    text: str
    finished: bool
    # the judge's P(own side) for this candidate: right after it (best-of-N's ``immediate``), or at
    # the end of the round continued from it (``final``); None when unscored or no verdict
    score: float | None = None
    speech: Speech | None = None  # the speech as played (quotes checked), to continue a round from it


@dataclass
class SpeechSample:
    """Every candidate for one speech of one round, and which one the round continued with."""

    round_index: int
    side: int
    step: int
    speech_number: int  # 1 = the side's opening speech
    prompt_ids: list[int]
    candidates: list[Candidate]
    chosen: int = 0
    prefix_len: int = 0  # speeches the transcript held when this one was asked for


@dataclass
class Rollout:
    """The rounds of one epoch: judged results plus every sampled speech."""

    epoch: int
    results: list[RoundResult]
    samples: list[SpeechSample]
    seconds: float = 0.0
    seed: int = 0

    def p_side(self, round_index: int, side: int) -> float | None:
        """The final judge's probability for ``side`` in a round (None when it gave no verdict)."""
        p_a = self.results[round_index].p_a
        if p_a is None or not self.results[round_index].ok:
            return None
        return p_a if side == 0 else 1.0 - p_a

    def is_correct_side(self, round_index: int, side: int) -> bool:
        return self.results[round_index].correct_index == side

    def totals(self) -> dict[str, tuple[float, float]]:
        """Every rollout stat as (sum, count): ``stats`` divides them. Processes that each played a
        shard add their totals before dividing, so the means are over all rounds, not of the ranks'
        means. The counts in ``COUNTED`` are totals themselves (their count is 1 per shard)."""
        judged = [r for r in self.results if r.ok and r.p_a is not None]
        cands = [c for s in self.samples for c in s.candidates]
        scored = [c.score for c in cands if c.score is not None and not math.isnan(c.score)]
        return {
            "rollout/rounds": (float(len(self.results)), 1.0),
            "rollout/speeches": (float(len(self.samples)), 1.0),
            "rollout/judge_accuracy": (sum(float(bool(r.judge_correct)) for r in judged), float(len(judged))),
            "rollout/judge_p_correct": (sum(_p_correct(r) for r in judged), float(len(judged))),
            "rollout/response_tokens": (float(sum(len(c.response_ids) for c in cands)), float(len(cands))),
            "val/contain_eos_token": (float(sum(c.finished for c in cands)), float(len(cands))),
            "objective/scores": (float(sum(scored)), float(len(scored))),
        }

    def stats(self) -> dict[str, float]:
        out = stats_from_totals(self.totals())
        out["rollout/seconds"] = self.seconds
        return out


COUNTED = ("rollout/rounds", "rollout/speeches", "rollout/examples")


def stats_from_totals(totals: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Means (sum / count; NaN with no count) and, for ``COUNTED`` keys, the sums. A stat that
    nothing scored (``objective/scores`` without a judge's scores) is left out."""
    out = {}
    for key, (total, count) in totals.items():
        if key in COUNTED:
            out[key] = total
        elif count > 0:
            out[key] = total / count
        elif key != "objective/scores":
            out[key] = float("nan")
    return out


def _p_correct(r: RoundResult) -> float:
    assert r.p_a is not None
    return r.p_a if r.correct_index == 0 else 1.0 - r.p_a


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


# -- examples ----------------------------------------------------------------------------------
def preference_pairs(
    rollout: Rollout, missing_eos_penalty: float = 0.0, opening_only: bool = False, min_margin: float = 0.0
) -> list[dict[str, Any]]:
    """One pair per speech: the judge's best candidate against its worst.

    Scores are the judge's P(own side) after the candidate, minus ``missing_eos_penalty`` for a
    candidate that hit ``max_new_tokens`` without ending (as TRL's online DPO does). Pairs whose
    score gap is ``<= min_margin`` are dropped (no preference to learn). ``preference`` is the
    soft label ``(1 + s_chosen − s_rejected) / 2`` in [0.5, 1] for the ``bon`` losses.
    """
    pairs = []
    for s in rollout.samples:
        if opening_only and s.speech_number != 1:
            continue
        scored = [(c.score - (0.0 if c.finished else missing_eos_penalty), c) for c in s.candidates
                  if c.score is not None and not math.isnan(c.score) and c.response_ids]
        if len(scored) < 2:
            continue
        (best_score, best), (worst_score, worst) = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
        margin = best_score - worst_score
        if margin <= min_margin:
            continue
        pairs.append({
            "prompt_ids": s.prompt_ids,
            "chosen_ids": best.response_ids,
            "rejected_ids": worst.response_ids,
            "preference": min(1.0, max(0.5, 0.5 * (1.0 + margin))),
            "chosen_score": best_score,
            "rejected_score": worst_score,
            "speech_number": s.speech_number,
            "round": s.round_index,
        })
    return pairs


def trajectories(
    rollout: Rollout,
    baseline: str = "constant",
    baseline_value: float = 0.5,
    correctness_weight: float = 0.0,
    opening_only: bool = False,
) -> list[dict[str, Any]]:
    """One trajectory per played speech, rewarded with the final judge's P(own side).

    ``reward = P(own side) − b + w·(+1 if the side argues the correct answer else −1)`` where
    ``b`` is ``baseline_value`` (``constant``; 0.5 makes a coin-flip verdict worth 0), the mean
    score of the rollout (``batch_mean``) or 0 (``none``), and ``w`` is ``correctness_weight``.
    ``score`` keeps the unshaped P(own side) for logging (TRL's ``objective/scores``).
    """
    if baseline not in ("none", "constant", "batch_mean"):
        raise ValueError(f"baseline must be 'none', 'constant' or 'batch_mean', got {baseline!r}")
    out = []
    for s in rollout.samples:
        p = rollout.p_side(s.round_index, s.side)
        cand = s.candidates[s.chosen]
        if p is None or not cand.response_ids or (opening_only and s.speech_number != 1):
            continue
        sign = 1.0 if rollout.is_correct_side(s.round_index, s.side) else -1.0
        out.append({"prompt_ids": s.prompt_ids, "response_ids": cand.response_ids, "score": p,
                    "reward": p + correctness_weight * sign, "finished": cand.finished,
                    "speech_number": s.speech_number, "round": s.round_index})
    b = {"none": 0.0, "constant": baseline_value}.get(baseline)
    if b is None:
        b = _mean([t["score"] for t in out]) if out else 0.0
    for t in out:
        t["reward"] -= b
    return out


def candidate_groups(
    rollout: Rollout,
    advantage: str = "grpo",
    role_conditioned: bool = True,
    correctness_weight: float = 0.0,
    opening_only: bool = False,
) -> list[dict[str, Any]]:
    """One example per speech: its candidates as a group, each with a group-relative advantage (GRPO).

    A candidate's reward is its ``score`` (the judge's P(own side), immediate or final as the
    rollout scored it) plus ``correctness_weight`` when its side argues the correct answer, minus
    it otherwise. Candidates without a score (no verdict) or without tokens are left out.

    The baseline group (``losses.group_advantages``): with ``role_conditioned`` the candidates of
    one speech, i.e. one (round, side, turn) state; without it every candidate of the round, both
    sides and all turns pooled, so in self-play the two roles' zero-sum rewards share a mean.
    """
    members = []  # (sample index, candidate index, reward, group id)
    for i, s in enumerate(rollout.samples):
        if opening_only and s.speech_number != 1:
            continue
        sign = 1.0 if rollout.is_correct_side(s.round_index, s.side) else -1.0
        for k, c in enumerate(s.candidates):
            if c.score is not None and not math.isnan(c.score) and c.response_ids:
                members.append((i, k, c.score + correctness_weight * sign, i if role_conditioned else s.round_index))
    if not members:
        return []
    rewards = torch.tensor([m[2] for m in members], dtype=torch.float64)
    advantages = group_advantages(rewards, torch.tensor([m[3] for m in members]), advantage).tolist()
    out: dict[int, dict[str, Any]] = {}
    for (i, k, reward, _), adv in zip(members, advantages):
        s = rollout.samples[i]
        c = s.candidates[k]
        if i not in out:
            out[i] = {"prompt_ids": s.prompt_ids, "completions": [], "rewards": [], "scores": [], "advantages": [],
                      "finished": [], "side": s.side, "speech_number": s.speech_number,
                      "round": s.round_index}
        ex = out[i]
        ex["completions"].append(c.response_ids)
        ex["rewards"].append(reward)
        ex["scores"].append(c.score)
        ex["advantages"].append(adv)
        ex["finished"].append(c.finished)
    return list(out.values())
