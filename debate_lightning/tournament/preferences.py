"""Preference pairs from tournaments: best-of-N candidates and branched rounds.

Both give pairs of speeches written for the same prompt (the debater's chat at that point of the
round, ``Transcript.debater_chat(side, prompts_for(fmt))``) with a *value* for each, the judge's
probability for the speaker's side:

* **best-of-N**: a ``BestOfNDebater`` samples N candidates per speech and keeps them, scored, on
  ``Speech.candidates``; a candidate's value is the judge's probability for its side on the
  transcript cut right after it, or, with ``opponent_n``, after sampled opponent replies to it
  (averaged, or the worst of them under ``selection: maxmin``; ``debate/best_of_n.py``).
  Pairs come from saved results, with no model call.
* **branched rounds** (``branched_half`` / ``branched_full``): at a branching speech the speaker
  writes ``branches`` alternatives and the round continues separately from each, so a round
  becomes a tree. In HALF branching one side (``branch_side``; alternating by round when unset)
  branches at each of its speeches and the other speaks once per node; in FULL both sides branch
  at every speech. In SINGLE_RANDOM branching (``branched_single_random``) exactly one speech of
  the round branches: one step and one side speaking at it, drawn uniformly from every
  (step, side) of the format (only ``branch_side``'s speeches when that is set) by a generator
  seeded with ``seed`` and the round id, so a rerun branches the same speech. This is our reading
  of the original's ``single_random``: rather than every speech of one side, one random turn of
  one random side gets the alternatives, so each round gives one preference group at one depth
  and ``branches`` leaves instead of ``branches ** speeches``. A speech's value is the mean judge probability, for its side, over the
  finished transcripts (leaves) that contain it. Sibling alternatives give the pairs.
  Every step of every tree of every round in a batch is one ``speak`` call per debater, and every
  leaf is judged in one ``p_a_orders`` call.

Pairs are ordered so that ``chosen_p >= rejected_p``; ``preference`` turns the two values into
the probability that chosen beats rejected, by the configured reward type (see ``preference``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from debate_lightning.data.preferences import PreferencePair, read_preferences, write_preferences
from debate_lightning.debate.agents import Debater, Judge, SpeechRequest, prompts_for
from debate_lightning.debate.engine import RoundResult, RoundSpec, judge_transcripts
from debate_lightning.debate.transcript import Speech, Transcript

RewardType = Literal["log_prob", "prob", "logit", "sigmoid", "binary"]
REWARD_TYPES = ("log_prob", "prob", "logit", "sigmoid", "binary")
PREFERENCES_FILE = "preferences.jsonl"
_EPS = 1e-6


def preference(chosen_p: float, rejected_p: float, reward: str = "prob", temperature: float = 0.1) -> float:
    """P(chosen beats rejected) from the two speeches' values ``v_c >= v_r`` (judge probabilities).

    The ``log_prob``, ``logit`` and ``sigmoid`` types are Bradley–Terry preferences
    sigmoid(r(v_c) - r(v_r)) for a reward r; values are clipped to [1e-6, 1 - 1e-6].

    * ``binary``:   1.0, a hard label (plain DPO).
    * ``prob``:     1/2 + (v_c - v_r)/2: the probability that chosen's round is won and rejected's
                    lost, a tie split evenly, if each wins independently with probability v.
    * ``log_prob``: r(v) = log v, so sigmoid(log v_c - log v_r) = v_c / (v_c + v_r).
    * ``logit``:    r(v) = log(v / (1 - v)), so sigmoid(logit v_c - logit v_r), the odds ratio's
                    share: [v_c (1 - v_r)] / [v_c (1 - v_r) + v_r (1 - v_c)].
    * ``sigmoid``:  r(v) = v / temperature, so sigmoid((v_c - v_r) / temperature).

    >>> round(preference(0.8, 0.4, "log_prob"), 4), round(preference(0.8, 0.4, "prob"), 4)
    (0.6667, 0.7)
    """
    c = min(max(chosen_p, _EPS), 1 - _EPS)
    r = min(max(rejected_p, _EPS), 1 - _EPS)
    if reward == "binary":
        return 1.0
    if reward == "prob":
        return 0.5 + 0.5 * (chosen_p - rejected_p)
    if reward == "log_prob":
        return c / (c + r)
    if reward == "logit":
        return _sigmoid(math.log(c / (1 - c)) - math.log(r / (1 - r)))
    if reward == "sigmoid":
        return _sigmoid((chosen_p - rejected_p) / temperature)
    raise ValueError(f"unknown reward type {reward!r}; choose one of {', '.join(REWARD_TYPES)}")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@dataclass
class PairOptions:
    """How values become pairs. ``pairing``: ``best_rest`` (the best alternative against each
    other one), ``best_worst`` (one pair per group), or ``all`` (every ordered pair of distinct
    values). Pairs whose values differ by at most ``min_margin`` are dropped (ties teach nothing)."""

    reward: str = "prob"
    temperature: float = 0.1
    pairing: Literal["best_rest", "best_worst", "all"] = "best_rest"
    min_margin: float = 0.0


def pairs_from_group(
    prompt: list[dict[str, str]],
    texts: Sequence[str],
    values: Sequence[float],
    options: PairOptions,
    meta: dict,
) -> list[PreferencePair]:
    """Pairs among alternatives for one prompt; ``texts[i]`` has value ``values[i]``."""
    ok = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    order = sorted(ok, key=lambda i: -values[i])
    if len(order) < 2:
        return []
    if options.pairing == "best_worst":
        candidates = [(order[0], order[-1])]
    elif options.pairing == "best_rest":
        candidates = [(order[0], j) for j in order[1:]]
    else:
        candidates = [(i, j) for a, i in enumerate(order) for j in order[a + 1 :]]
    out = []
    for i, j in candidates:
        vc, vr = values[i], values[j]
        # Identical texts (greedy sampling) can differ in value only through later speeches.
        if vc - vr <= options.min_margin or texts[i] == texts[j]:
            continue
        out.append(
            PreferencePair(
                prompt=prompt,
                chosen=texts[i],
                rejected=texts[j],
                chosen_p=vc,
                rejected_p=vr,
                preference=preference(vc, vr, options.reward, options.temperature),
                meta={**meta, "chosen_index": i, "rejected_index": j},
            )
        )
    return out


# --------------------------------------------------------------------------- best-of-N


def best_of_n_pairs(results: Iterable[RoundResult], options: PairOptions | None = None) -> list[PreferencePair]:
    """Pairs from the scored candidates that best-of-N debaters kept on their speeches."""
    options = options or PairOptions()
    out: list[PreferencePair] = []
    for r in results:
        if not r.ok:
            continue
        tr = r.transcript()
        for k, speech in enumerate(tr.speeches):
            if len(speech.candidates) < 2:
                continue
            # The speaker saw the speeches of earlier steps only (simultaneous speakers are blind).
            before = Transcript(tr.question, tr.format, [s for s in tr.speeches if s.step < speech.step])
            prompt = before.debater_chat(speech.side, prompts_for(tr.format))
            meta = {
                "source": "best_of_n",
                "round_id": r.round_id,
                "speech": k,
                "step": speech.step,
                "side": speech.side,
                "debater": r.debaters[speech.side],
                "judge": r.judge,
                "correct_side": speech.side == r.correct_index,
            }
            cands = speech.candidates
            out += pairs_from_group(prompt, [c["text"] for c in cands], [c["score"] for c in cands], options, meta)
    return out


# --------------------------------------------------------------------------- branched rounds


@dataclass
class _Node:
    """A partial transcript of one round's tree; ``ids`` name its speeches (parallel list)."""

    round: int
    transcript: Transcript
    ids: list[int] = field(default_factory=list)
    dead: bool = False  # a speech failed: the branch stops and is not judged


@dataclass
class BranchedRound:
    """One round played as a tree: every speech, every leaf and its judge probability."""

    spec: RoundSpec
    speeches: dict[int, tuple[Speech, list[dict[str, str]]]]  # id -> (speech, prompt it answered)
    groups: list[list[int]]  # sibling speech ids written for the same prompt
    leaves: list[_Node]
    leaf_p_a: list[list[float] | None]  # per leaf: judge P(A) per presentation order (None if dead)
    leaf_errors: list[str | None] = field(default_factory=list)  # why a leaf has no verdict

    def values(self) -> dict[int, float]:
        """A speech's value: the mean over the judged leaves containing it of P(speaker's side)."""
        total: dict[int, float] = defaultdict(float)
        count: dict[int, int] = defaultdict(int)
        for leaf, orders in zip(self.leaves, self.leaf_p_a):
            if not orders:
                continue
            p_a = sum(orders) / len(orders)
            if math.isnan(p_a):
                continue
            for sid in leaf.ids:
                side = self.speeches[sid][0].side
                total[sid] += p_a if side == 0 else 1.0 - p_a
                count[sid] += 1
        return {sid: total[sid] / count[sid] for sid in count}

    def pairs(self, options: PairOptions, mode: str) -> list[PreferencePair]:
        values = self.values()
        out = []
        for g, group in enumerate(self.groups):
            speech, prompt = self.speeches[group[0]]
            meta = {
                "source": mode,
                "round_id": self.spec.round_id,
                "group": g,
                "step": speech.step,
                "side": speech.side,
                "debater": self.spec.debaters[speech.side],
                "correct_side": speech.side == self.spec.question.correct_index,
                "leaves": len(self.leaves),
            }
            vals = [values.get(sid, math.nan) for sid in group]
            out += pairs_from_group(prompt, [self.speeches[s][0].text for s in group], vals, options, meta)
        return out


BRANCHED_MODES = ("branched_half", "branched_full", "branched_single_random")


def branching_sides(spec: RoundSpec, mode: str, branch_side: int | None) -> tuple[int, ...]:
    """The sides that branch: both in FULL; in HALF ``branch_side``, or, when unset, side
    ``int(round_id, 16) % 2`` so both positions get trained on across a tournament.
    SINGLE_RANDOM draws from ``branch_side``'s speeches when set, else from both sides'."""
    if mode == "branched_full" or (mode == "branched_single_random" and branch_side is None):
        return (0, 1)
    if mode not in BRANCHED_MODES:
        raise ValueError(f"unknown branching mode {mode!r}; expected one of {', '.join(BRANCHED_MODES)}")
    if branch_side is not None:
        return (branch_side,)
    speakers = spec.format.sides
    if len(speakers) == 1:
        return speakers
    return (int(spec.round_id, 16) % 2,)


def branch_points(spec: RoundSpec, mode: str, branch_side: int | None, seed: int = 0) -> set[tuple[int, int]]:
    """The (step, side) speeches of ``spec`` that branch. HALF and FULL: every speech of the
    branching sides. SINGLE_RANDOM: one of them, drawn with ``random.Random(f"{seed}:{round_id}")``."""
    sides = branching_sides(spec, mode, branch_side)
    points = [(t, side) for t, speakers in enumerate(spec.format.steps()) for side in speakers if side in sides]
    if mode != "branched_single_random" or not points:
        return set(points)
    return {random.Random(f"{seed}:{spec.round_id}").choice(points)}


def play_branched(
    specs: Sequence[RoundSpec],
    debaters: Mapping[str, Debater],
    judge: Judge,
    mode: str = "branched_half",
    branches: int = 2,
    branch_side: int | None = None,
    seed: int = 0,
) -> list[BranchedRound]:
    """Play ``specs`` as trees, batched across every node of every round, and judge every leaf.
    ``seed`` only matters to ``branched_single_random`` (which speech branches)."""
    if branches < 2:
        raise ValueError(f"branches must be >= 2, got {branches}")
    missing = {name for s in specs for side in s.format.sides if (name := s.debaters[side]) not in debaters}
    if missing:
        raise KeyError(f"rounds name debaters that are not configured: {sorted(missing)}")
    nodes = [_Node(i, Transcript(s.question, s.format)) for i, s in enumerate(specs)]
    steps = [s.format.steps() for s in specs]
    branching = [branch_points(s, mode, branch_side, seed) for s in specs]
    speeches: list[dict[int, tuple[Speech, list]]] = [dict() for _ in specs]
    groups: list[list[list[int]]] = [[] for _ in specs]
    next_id = itertools.count()
    for t in range(max((len(st) for st in steps), default=0)):
        # (node index, side, copies) per request; grouped by debater for one call each.
        by_agent: dict[str, list[tuple[int, int, SpeechRequest]]] = defaultdict(list)
        for n, node in enumerate(nodes):
            if node.dead or t >= len(steps[node.round]):
                continue
            spec = specs[node.round]
            for side in steps[node.round][t]:
                copies = branches if (t, side) in branching[node.round] else 1
                for _ in range(copies):
                    by_agent[spec.debaters[side]].append((n, side, SpeechRequest(node.transcript, side, t)))
        produced: dict[tuple[int, int], list[Speech]] = defaultdict(list)
        for name, reqs in by_agent.items():
            for (n, side, _), speech in zip(reqs, debaters[name].speak([r for _, _, r in reqs])):
                produced[(n, side)].append(speech)
        new_nodes = []
        for n, node in enumerate(nodes):
            if node.dead or t >= len(steps[node.round]):
                new_nodes.append(node)
                continue
            options_per_side = []
            for side in steps[node.round][t]:
                prompt = node.transcript.debater_chat(side, prompts_for(node.transcript.format))
                ids = []
                for speech in produced[(n, side)]:
                    sid = next(next_id)
                    speeches[node.round][sid] = (speech, prompt)
                    ids.append(sid)
                if len(ids) > 1:
                    groups[node.round].append(ids)
                options_per_side.append(ids)
            for combo in itertools.product(*options_per_side):
                new = [speeches[node.round][sid][0] for sid in combo]
                new_nodes.append(
                    _Node(
                        node.round,
                        Transcript(node.transcript.question, node.transcript.format, [*node.transcript.speeches, *new]),
                        [*node.ids, *combo],
                        dead=any(s.error for s in new),
                    )
                )
        nodes = new_nodes
    judgeable = [node for node in nodes if not node.dead]
    probs = judge.p_a_orders([node.transcript for node in judgeable]) if judgeable else []
    errors = list(getattr(judge, "last_errors", None) or [None] * len(probs))
    by_node = {id(node): p for node, p in zip(judgeable, probs)}
    error_of = {id(node): e for node, e in zip(judgeable, errors)}
    out = []
    for i, spec in enumerate(specs):
        leaves = [node for node in nodes if node.round == i]
        out.append(
            BranchedRound(
                spec, speeches[i], groups[i], leaves, [by_node.get(id(node)) for node in leaves],
                [error_of.get(id(node)) for node in leaves],
            )
        )
    return out


class _Precomputed:
    """Stands in for a judge whose verdicts on ``transcripts`` are already known, so a branched
    round's first leaf becomes an ordinary ``RoundResult`` without a second judging call."""

    def __init__(self, name: str, transcripts: list[Transcript], probs: list[list[float]], errors: list[str | None]):
        self.name = name
        self._known = {id(t): (p, e) for t, p, e in zip(transcripts, probs, errors)}
        self.last_errors: list[str | None] = []

    def p_a_orders(self, transcripts: Sequence[Transcript]) -> list[list[float]]:
        known = [self._known[id(t)] for t in transcripts]
        self.last_errors = [e for _, e in known]
        return [p for p, _ in known]


def branched_results(trees: Sequence[BranchedRound], judge: Judge) -> list[RoundResult]:
    """One ordinary result per round, for its first leaf (the all-first-alternatives path), so a
    branched tournament's rounds.jsonl reports accuracy like any other."""
    specs = [t.spec for t in trees]
    firsts = [t.leaves[0].transcript for t in trees]
    probs = [t.leaf_p_a[0] or [] for t in trees]
    errors = [t.leaf_errors[0] if t.leaf_errors else None for t in trees]
    known = _Precomputed(judge.name or "", firsts, probs, errors)
    return judge_transcripts(specs, firsts, known)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- files


def filter_preferences(path: str | Path, keep_round_ids: set[str]) -> int:
    """Keep only pairs of rounds in ``keep_round_ids`` (those whose results were saved), so a
    resumed run neither loses nor duplicates pairs; also drops a kill's partial last line.
    Returns the number of pairs dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        path.write_bytes(raw[: raw.rfind(b"\n") + 1])
    pairs = read_preferences(path)
    keep = [p for p in pairs if p.meta.get("round_id") in keep_round_ids]
    if len(keep) != len(pairs):
        write_preferences(path, keep)
    return len(pairs) - len(keep)


def preferences_main(argv: list[str] | None = None) -> int:
    """``python -m debate_lightning.tournament.preferences DIR --output FILE``: best-of-N pairs
    from a saved results directory."""
    import argparse

    from debate_lightning.tournament.results import ResultsFile

    ap = argparse.ArgumentParser(prog="python -m debate_lightning.tournament.preferences", description=preferences_main.__doc__)
    ap.add_argument("results_dir")
    ap.add_argument("--output", required=True)
    ap.add_argument("--reward", default="prob", choices=REWARD_TYPES)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--pairing", default="best_rest", choices=("best_rest", "best_worst", "all"))
    ap.add_argument("--min-margin", type=float, default=0.0)
    args = ap.parse_args(argv)
    opts = PairOptions(args.reward, args.temperature, args.pairing, args.min_margin)
    pairs = best_of_n_pairs(ResultsFile(args.results_dir).latest(), opts)
    n = write_preferences(args.output, pairs)
    print(f"{n} pairs -> {args.output}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(preferences_main())
