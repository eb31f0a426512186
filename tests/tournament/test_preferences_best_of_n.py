"""Best-of-N as the original had it: candidates scored against opponent replies (``opponent_n``),
the robust ``maxmin`` choice, ``branched_single_random``, and every reward type with every mode."""

from __future__ import annotations

import pytest
from tournament_helpers import CyclingGenerator, KeywordJudge, question

from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge
from debate_lightning.debate.best_of_n import OpponentBestOfNDebater, reply_step
from debate_lightning.debate.engine import RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import Generation, Generator
from debate_lightning.tournament.config import DebaterConfig, TournamentConfig
from debate_lightning.tournament.preferences import (
    REWARD_TYPES,
    PairOptions,
    best_of_n_pairs,
    branch_points,
    play_branched,
    preference,
)


class AnsweringGenerator(Generator):
    """The opponent: its k-th reply to a chat that contains ``word`` is ``replies[word][k % len]``
    (counted per word, across calls); a chat with none of the words gets ``default``."""

    def __init__(self, replies: dict[str, list[str]], default: str = "pass", name: str = "answering"):
        self.replies, self.default, self.name = replies, default, name
        self.seen: dict[str, int] = {}
        self.calls: list[int] = []

    def generate(self, chats, params):
        self.calls.append(len(chats))
        out = []
        for chat in chats:
            text = " ".join(m["content"] for m in chat)
            word = next((w for w in self.replies if f": {w}" in text), None)
            if word is None:
                out.append(Generation(self.default, num_tokens=1))
                continue
            k = self.seen.get(word, 0)
            self.seen[word] = k + 1
            out.append(Generation(self.replies[word][k % len(self.replies[word])], num_tokens=1))
        return out


def _spec(qid="q1", num_speeches=1, kind="debate"):
    return RoundSpec(question(qid), Format(kind=kind, num_speeches=num_speeches), ("alice", "bob"))


# "bold" scores best alone (.8 vs .6) but the opponent crushes it (.8 - .5 = .3); "solid" survives.
WEIGHTS = {("A", "bold"): 0.3, ("A", "solid"): 0.1, ("B", "crush"): -0.5, ("B", "shrug"): 0.0}


def _alice(opponent_n, selection="max", texts=("bold", "solid"), replies=None, weights=WEIGHTS):
    judge = Judge(KeywordJudge(weights), both_orders=False)
    opponent = Debater("bob", AnsweringGenerator(replies or {"bold": ["crush"], "solid": ["shrug"]}))
    alice = OpponentBestOfNDebater("alice", CyclingGenerator(list(texts)), n=len(texts), judge=judge,
                                   opponent_n=opponent_n, selection=selection, opponent=opponent)
    return alice, opponent, judge


def test_opponent_n_changes_which_candidate_wins():
    # Alone (plain best-of-N, and opponent_n = 0): "bold" wins.
    judge = Judge(KeywordJudge(WEIGHTS), both_orders=False)
    plain = BestOfNDebater("alice", CyclingGenerator(["bold", "solid"]), n=2, judge=judge)
    bob = Debater("bob", CyclingGenerator(["shrug"]))
    [r] = run_rounds([_spec()], {"alice": plain, "bob": bob}, judge)
    assert r.speeches[0]["text"] == "bold"
    alice0, _, judge0 = _alice(opponent_n=0)
    [r0] = run_rounds([_spec()], {"alice": alice0, "bob": bob}, judge0)
    assert r0.speeches[0]["text"] == "bold"
    assert [c["score"] for c in r0.speeches[0]["candidates"]] == pytest.approx([0.8, 0.6])

    # Against 3 opponent replies each: bold -> .3, solid -> .6, so "solid" wins.
    alice, opponent, judge3 = _alice(opponent_n=3)
    [r3] = run_rounds([_spec()], {"alice": alice, "bob": Debater("bob", CyclingGenerator(["shrug"]))}, judge3)
    first = r3.speeches[0]
    assert first["text"] == "solid"
    by_text = {c["text"]: c for c in first["candidates"]}
    assert by_text["bold"]["opponent_scores"] == pytest.approx([0.3] * 3)
    assert by_text["solid"]["score"] == pytest.approx(0.6) and by_text["solid"]["chosen"]
    # One generate call for all 2 x 3 simulated replies; one judge call for all six trials,
    # then the round's own verdict.
    assert opponent.generator.calls == [6]
    assert judge3.generator.calls == [6, 1]
    # The simulated replies never enter the round: Bob's real speech is his own.
    assert [s["text"] for s in r3.speeches] == ["solid", "shrug"]
    assert "crush" not in str(r3.speeches)
    # Pairs follow the opponent-aware scores: solid is chosen over bold.
    [pair] = best_of_n_pairs([r3], PairOptions(reward="prob"))
    assert (pair.chosen, pair.rejected) == ("solid", "bold")
    assert (pair.chosen_p, pair.rejected_p) == pytest.approx((0.6, 0.3))


def test_maxmin_picks_the_best_worst_case():
    # x: replies alternate weak (+.3) / crush (-.5): P(A) .9 and .1 -> mean .5, min .1.
    # y: every reply "dent" (-.05): .45 and .45 -> mean .45, min .45.
    weights = {("A", "x"): 0.1, ("B", "weak"): 0.3, ("B", "crush"): -0.5, ("B", "dent"): -0.05}
    replies = {"x": ["weak", "crush"], "y": ["dent"]}
    bob = Debater("bob", CyclingGenerator(["dent"]))
    picks = {}
    for selection in ("max", "maxmin"):
        alice, _, judge = _alice(2, selection, texts=("x", "y"), replies=replies, weights=weights)
        [r] = run_rounds([_spec()], {"alice": alice, "bob": bob}, judge)
        cands = {c["text"]: c for c in r.speeches[0]["candidates"]}
        assert cands["x"]["mean_score"] == pytest.approx(0.5) and cands["x"]["min_score"] == pytest.approx(0.1)
        assert cands["y"]["mean_score"] == pytest.approx(0.45) and cands["y"]["min_score"] == pytest.approx(0.45)
        picks[selection] = r.speeches[0]["text"]
        chosen = next(c for c in cands.values() if c["chosen"])
        assert chosen["score"] == max(c["score"] for c in cands.values())
    assert picks == {"max": "x", "maxmin": "y"}


def test_last_speech_and_side_b_are_scored_correctly():
    # Bob (side B) is the best-of-N debater; he speaks last in a 1-speech debate, so nobody
    # answers him and his candidates are scored alone, for side B (1 - P(A)).
    judge = Judge(KeywordJudge({("B", "firm"): -0.2, ("B", "limp"): 0.1}), both_orders=False)
    opp = Debater("alice", AnsweringGenerator({}, default="never"))
    bob = OpponentBestOfNDebater("bob", CyclingGenerator(["limp", "firm"]), n=2, judge=judge, opponent_n=4, opponent=opp)
    [r] = run_rounds([_spec()], {"alice": Debater("alice", CyclingGenerator(["hi"])), "bob": bob}, judge)
    assert r.speeches[1]["text"] == "firm" and opp.generator.calls == []
    assert sorted(c["score"] for c in r.speeches[1]["candidates"]) == pytest.approx([0.4, 0.7])
    # reply_step: the opponent's next step in the format, or none.
    from debate_lightning.debate.agents import SpeechRequest
    from debate_lightning.debate.transcript import Transcript

    tr = Transcript(question(), Format(kind="debate", num_speeches=2))
    assert reply_step(SpeechRequest(tr, 0, 0)) == (1, 1)
    assert reply_step(SpeechRequest(tr, 1, 3)) is None
    cons = Transcript(question(), Format(kind="consultancy", num_speeches=2))
    assert reply_step(SpeechRequest(cons, 0, 0)) is None


def test_bad_options_are_refused_naming_them():
    judge = Judge(KeywordJudge({}), both_orders=False)
    with pytest.raises(ValueError, match="opponent_n must be >= 0"):
        OpponentBestOfNDebater("a", CyclingGenerator(["x"]), n=2, judge=judge, opponent_n=-1)
    with pytest.raises(ValueError, match="selection must be one of"):
        OpponentBestOfNDebater("a", CyclingGenerator(["x"]), n=2, judge=judge, selection="mean")  # type: ignore[arg-type]
    cfg = TournamentConfig(debaters=[DebaterConfig(name="a", opponent_n=2)])
    with pytest.raises(ValueError, match=r"debaters\[0\].*best_of_n > 1"):
        cfg.check()
    cfg = TournamentConfig(debaters=[DebaterConfig(name="a", best_of_n=3, opponent_n=-2)])
    with pytest.raises(ValueError, match=r"debaters\[0\].opponent_n must be >= 0"):
        cfg.check()
    TournamentConfig(debaters=[DebaterConfig(name="a", best_of_n=3, opponent_n=2, selection="maxmin")]).check()


def test_single_random_branches_exactly_one_speech_per_round_seeded():
    judge = Judge(KeywordJudge({("A", "strong"): 0.2, ("B", "firm"): -0.1}), both_orders=False)
    debaters = {"alice": Debater("alice", CyclingGenerator(["strong", "weak"])), "bob": Debater("bob", CyclingGenerator(["firm", "limp"]))}
    specs = [_spec(f"q{k}", num_speeches=2) for k in range(12)]
    trees = play_branched(specs, debaters, judge, "branched_single_random", branches=3, seed=7)
    chosen = set()
    for tree, spec in zip(trees, specs):
        assert len(tree.groups) == 1 and len(tree.groups[0]) == 3  # one speech, three alternatives
        assert len(tree.leaves) == 3 and all(len(leaf.transcript.speeches) == 4 for leaf in tree.leaves)
        speech = tree.speeches[tree.groups[0][0]][0]
        assert {(speech.step, speech.side)} == branch_points(spec, "branched_single_random", None, seed=7)
        chosen.add((speech.step, speech.side))
    # Random across rounds (12 rounds, 4 speeches each: more than one point drawn), fixed by the seed.
    assert len(chosen) > 1
    again = [branch_points(s, "branched_single_random", None, seed=7) for s in specs]
    assert again == [branch_points(s, "branched_single_random", None, seed=7) for s in specs]
    assert again != [branch_points(s, "branched_single_random", None, seed=8) for s in specs]
    # branch_side restricts the draw to that side's speeches.
    assert all(side == 1 for s in specs for _, side in branch_points(s, "branched_single_random", 1, seed=7))
    # HALF and FULL are unchanged: every speech of the branching sides.
    assert branch_points(specs[0], "branched_full", None) == {(0, 0), (1, 1), (2, 0), (3, 1)}
    assert branch_points(specs[0], "branched_half", 0) == {(0, 0), (2, 0)}
    with pytest.raises(ValueError, match="unknown branching mode"):
        branch_points(specs[0], "branched_sometimes", None)


def _pairs_by_mode(mode: str, reward: str):
    options = PairOptions(reward=reward, temperature=0.2, pairing="all")
    if mode.startswith("branched"):
        debaters = {"alice": Debater("alice", CyclingGenerator(["strong", "weak"])),
                    "bob": Debater("bob", CyclingGenerator(["firm", "limp"]))}
        judge = Judge(KeywordJudge({("A", "strong"): 0.2, ("A", "weak"): -0.2, ("B", "firm"): -0.1}), both_orders=False)
        trees = play_branched([_spec(f"q{k}") for k in range(4)], debaters, judge, mode, branches=2, branch_side=0)
        return [p for t in trees for p in t.pairs(options, mode)]
    opponent_n, selection = {"best_of_n": (0, "max"), "opponent_n": (2, "max"), "maxmin": (2, "maxmin")}[mode]
    alice, _, judge = _alice(opponent_n, selection)
    [r] = run_rounds([_spec()], {"alice": alice, "bob": Debater("bob", CyclingGenerator(["shrug"]))}, judge)
    return best_of_n_pairs([r], options)


@pytest.mark.parametrize("mode", ["best_of_n", "opponent_n", "maxmin", "branched_half", "branched_full", "branched_single_random"])
@pytest.mark.parametrize("reward", REWARD_TYPES)
def test_every_reward_type_works_with_every_mode(mode, reward):
    pairs = _pairs_by_mode(mode, reward)
    assert pairs, f"{mode} made no pair"
    for p in pairs:
        assert p.chosen_p > p.rejected_p
        assert p.preference == pytest.approx(preference(p.chosen_p, p.rejected_p, reward, 0.2))
        assert 0.5 < p.preference <= 1.0
        assert (p.preference == 1.0) == (reward == "binary")
