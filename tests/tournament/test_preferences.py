"""Preference pairs: reward formulas, branched rounds computed by hand, best-of-N candidates."""

from __future__ import annotations

import math

import pytest
from tournament_helpers import CyclingGenerator, KeywordJudge, question

from debate_lightning.data.preferences import read_preferences
from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge, prompts_for
from debate_lightning.debate.engine import RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Transcript
from debate_lightning.tournament.preferences import (
    PairOptions,
    best_of_n_pairs,
    branched_results,
    play_branched,
    preference,
)


def test_reward_types_by_hand():
    c, r = 0.8, 0.4
    assert preference(c, r, "binary") == 1.0
    assert preference(c, r, "prob") == pytest.approx(0.5 + 0.5 * 0.4)
    assert preference(c, r, "log_prob") == pytest.approx(0.8 / 1.2)
    odds = (0.8 / 0.2) / (0.4 / 0.6)  # 6
    assert preference(c, r, "logit") == pytest.approx(odds / (1 + odds))
    assert preference(c, r, "sigmoid", temperature=0.1) == pytest.approx(1 / (1 + math.exp(-4)))
    for kind in ("prob", "log_prob", "logit", "sigmoid"):
        assert preference(0.6, 0.6, kind) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown reward type"):
        preference(c, r, "elo")


def _agents(alice_texts, bob_texts, weights):
    debaters = {"alice": Debater("alice", CyclingGenerator(alice_texts)), "bob": Debater("bob", CyclingGenerator(bob_texts))}
    judge = Judge(KeywordJudge(weights), both_orders=False)
    return debaters, judge


def _spec(qid="q1", num_speeches=1):
    return RoundSpec(question(qid), Format(kind="debate", num_speeches=num_speeches), ("alice", "bob"))


def test_branched_half_two_speeches_by_hand():
    # Alice (side 0) branches at both her speeches; Bob speaks once per node.
    # P(A) = .5 + .2 per "strong" by A - .2 per "weak" by A.
    debaters, judge = _agents(["strong", "weak"], ["reply"], {("A", "strong"): 0.2, ("A", "weak"): -0.2})
    [tree] = play_branched([_spec(num_speeches=2)], debaters, judge, "branched_half", branches=2, branch_side=0)
    # Leaves: (strong,strong) .9, (strong,weak) .5, (weak,strong) .5, (weak,weak) .1
    assert sorted(round(p[0], 6) for p in tree.leaf_p_a) == [0.1, 0.5, 0.5, 0.9]
    assert len(tree.groups) == 3  # step 0 once, step 2 under each first speech
    pairs = tree.pairs(PairOptions(reward="prob"), "branched_half")
    by_step = sorted((p.meta["step"], p.chosen, p.rejected, round(p.chosen_p, 6), round(p.rejected_p, 6)) for p in pairs)
    # First speech: strong = mean(.9, .5) = .7, weak = mean(.5, .1) = .3.
    # Second speech: under strong .9 vs .5; under weak .5 vs .1.
    assert by_step == [(0, "strong", "weak", 0.7, 0.3), (2, "strong", "weak", 0.5, 0.1), (2, "strong", "weak", 0.9, 0.5)]
    first = next(p for p in pairs if p.meta["step"] == 0)
    assert first.preference == pytest.approx(0.5 + 0.5 * 0.4)
    # The prompt is Alice's chat before any speech.
    empty = Transcript(question("q1"), Format(kind="debate", num_speeches=2))
    assert first.prompt == empty.debater_chat(0, prompts_for(empty.format))
    assert first.meta["side"] == 0 and first.meta["debater"] == "alice" and first.meta["correct_side"] is True
    # Bob's replies never branch: no pair has side 1.
    assert {p.meta["side"] for p in pairs} == {0}


def test_branched_full_by_hand_and_batched():
    # Both branch. P(A) = .5 + .2 [A strong] - .2 [A weak] - .1 [B firm]
    debaters, judge = _agents(
        ["strong", "weak"], ["firm", "limp"], {("A", "strong"): 0.2, ("A", "weak"): -0.2, ("B", "firm"): -0.1}
    )
    specs = [_spec("q1"), _spec("q2"), _spec("q3")]
    trees = play_branched(specs, debaters, judge, "branched_full", branches=2)
    # One generate call per debater per step for all three rounds, one judge call for all 12 leaves.
    assert debaters["alice"].generator.calls == [6] and debaters["bob"].generator.calls == [12]
    assert judge.generator.calls == [12]
    for tree in trees:
        assert len(tree.leaves) == 4 and len(tree.groups) == 3  # Alice once, Bob under each of her speeches
        assert len(tree.pairs(PairOptions(), "branched_full")) == 3


def test_branched_full_values_exact():
    debaters, judge = _agents(
        ["strong", "weak"], ["firm", "limp"], {("A", "strong"): 0.2, ("A", "weak"): -0.2, ("B", "firm"): -0.1}
    )
    [tree] = play_branched([_spec()], debaters, judge, "branched_full", branches=2)
    values = tree.values()
    text = {sid: s.text for sid, (s, _) in tree.speeches.items()}
    # Leaves (P(A)): strong+firm .6, strong+limp .7, weak+firm .2, weak+limp .3.
    # Alice: strong = (.6 + .7)/2 = .65, weak = .25. Bob (P(B) = 1 - P(A)):
    # after strong: firm .4, limp .3; after weak: firm .8, limp .7 -> "firm" is chosen (it lowers P(A)).
    alice = sorted((text[s], round(v, 6)) for s, v in values.items() if tree.speeches[s][0].side == 0)
    bob = sorted(round(v, 6) for s, v in values.items() if tree.speeches[s][0].side == 1)
    assert alice == [("strong", 0.65), ("weak", 0.25)]
    assert bob == [0.3, 0.4, 0.7, 0.8]
    pairs = tree.pairs(PairOptions(reward="log_prob"), "branched_full")
    bob_pairs = sorted((round(p.chosen_p, 6), round(p.rejected_p, 6), p.chosen) for p in pairs if p.meta["side"] == 1)
    assert bob_pairs == [(0.4, 0.3, "firm"), (0.8, 0.7, "firm")]
    assert all(p.preference == pytest.approx(p.chosen_p / (p.chosen_p + p.rejected_p)) for p in pairs)
    # The ordinary result of the round is its first leaf (all first alternatives), judged once.
    [r] = branched_results([tree], judge)
    assert [s["text"] for s in r.speeches] == ["strong", "firm"] and r.p_a == pytest.approx(0.6)
    assert r.round_id == _spec().round_id and r.ok


def test_identical_alternatives_make_no_pair():
    # Greedy Alice repeats herself; Bob's branches make her two copies' values differ anyway.
    debaters, judge = _agents(["same"], ["firm", "limp", "limp", "limp"], {("B", "firm"): -0.1})
    [tree] = play_branched([_spec()], debaters, judge, "branched_full", branches=2)
    # Alice's copies: mean(.4, .5) = .45 vs mean(.5, .5) = .5 -- different values, same text: no pair.
    assert sorted(round(v, 6) for s, v in tree.values().items() if tree.speeches[s][0].side == 0) == [0.45, 0.5]
    [pair] = tree.pairs(PairOptions(), "branched_full")
    assert (pair.meta["side"], pair.chosen, pair.rejected) == (1, "firm", "limp")


def test_half_branch_side_alternates_by_round_id_when_unset():
    debaters, judge = _agents(["strong", "weak"], ["firm", "limp"], {})
    specs = [_spec(f"q{k}") for k in range(8)]
    trees = play_branched(specs, debaters, judge, "branched_half", branches=2)
    sides = {tree.speeches[g[0]][0].side for tree in trees for g in tree.groups}
    assert sides == {0, 1}
    for tree in trees:
        assert {tree.speeches[g[0]][0].side for g in tree.groups} == {int(tree.spec.round_id, 16) % 2}


def test_best_of_n_pairs_from_candidates():
    gen = CyclingGenerator(["strong", "weak", "meh"])
    judge = Judge(KeywordJudge({("A", "strong"): 0.3, ("A", "weak"): -0.3, ("B", "strong"): -0.3}), both_orders=False)
    debaters = {"alice": BestOfNDebater("alice", gen, n=3, judge=judge), "bob": Debater("bob", CyclingGenerator(["ok"]))}
    [r] = run_rounds([_spec()], debaters, judge)
    assert r.speeches[0]["text"] == "strong" and len(r.speeches[0]["candidates"]) == 3
    pairs = best_of_n_pairs([r], PairOptions(reward="binary", pairing="all"))
    got = sorted((p.chosen, p.rejected, round(p.chosen_p, 6), round(p.rejected_p, 6)) for p in pairs)
    assert got == [("meh", "weak", 0.5, 0.2), ("strong", "meh", 0.8, 0.5), ("strong", "weak", 0.8, 0.2)]
    assert len(best_of_n_pairs([r], PairOptions(pairing="best_worst"))) == 1
    assert len(best_of_n_pairs([r], PairOptions(pairing="best_rest", min_margin=0.35))) == 1  # .8-.5 dropped
    empty = Transcript(question("q1"), Format(kind="debate", num_speeches=1))
    assert pairs[0].prompt == empty.debater_chat(0, prompts_for(empty.format))


def test_branched_tournament_writes_pairs_dpo_can_read(tmp_path):
    from tournament_helpers import scripted_config

    from debate_lightning.tournament.cli import tournament_main

    cfg = scripted_config(tmp_path / "t.yaml", preferences={"mode": "branched_full", "reward": "logit"})
    out = tmp_path / "out"
    assert tournament_main(["--config", str(cfg), "--output", str(out), "--progress", "false", "--report", "false"]) == 0
    pairs = read_preferences(out / "preferences.jsonl")
    # 3 questions x 2 orders x 2 matchups = 12 rounds; FULL with one speech per side: 3 groups each.
    assert len({p.meta["round_id"] for p in pairs}) == 12
    assert all(p.chosen_p >= p.rejected_p and 0.5 <= p.preference <= 1 for p in pairs)
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 12


def test_resume_keeps_only_pairs_of_saved_rounds(tmp_path):
    from debate_lightning.data.preferences import PreferencePair, write_preferences
    from debate_lightning.tournament.preferences import filter_preferences

    prompt = [{"role": "user", "content": "argue"}]
    path = tmp_path / "preferences.jsonl"
    write_preferences(path, [PreferencePair(prompt, "a", "b", 0.6, 0.4, 0.6, {"round_id": rid}) for rid in ("r1", "r2", "r1")])
    with path.open("ab") as f:
        f.write(b'{"prompt": [{"role": "us')  # a kill mid-write
    assert filter_preferences(path, {"r1"}) == 1
    assert [p.meta["round_id"] for p in read_preferences(path)] == ["r1", "r1"]


def test_best_of_n_tournament_writes_pairs_and_resume_rewrites_them_once(tmp_path):
    from tournament_helpers import scripted_config

    from debate_lightning.tournament.cli import tournament_main

    cfg = scripted_config(tmp_path / "t.yaml", debaters=[{"name": "a", "model": "r", "best_of_n": 3}, {"name": "b", "model": "r"}],
                          preferences={"mode": "best_of_n", "reward": "sigmoid", "pairing": "best_rest"})
    out = tmp_path / "out"
    argv = ["--config", str(cfg), "--output", str(out), "--progress", "false", "--report", "false"]
    assert tournament_main(argv) == 0
    pairs = read_preferences(out / "preferences.jsonl")
    # Debater a speaks once per round (12 rounds): 3 candidates -> up to 2 best_rest pairs each.
    assert 12 <= len(pairs) <= 24 and {p.meta["debater"] for p in pairs} == {"a"}
    assert tournament_main([*argv, "--resume", "true"]) == 0
    assert read_preferences(out / "preferences.jsonl") == pairs
    bad = scripted_config(tmp_path / "bad.yaml", preferences={"mode": "best_of_n"})
    assert tournament_main(["--config", str(bad), "--output", str(tmp_path / "b"), "--progress", "false"]) == 2


def test_opponent_n_maxmin_and_single_random_run_from_a_config(tmp_path):
    """The new best-of-N keys reach the tournament's debaters: every candidate of a carries its
    scores after 2 opponent replies and the maxmin choice; single_random branches one speech a round."""
    from tournament_helpers import scripted_config

    from debate_lightning.tournament.cli import tournament_main
    from debate_lightning.tournament.results import read_results

    cfg = scripted_config(tmp_path / "t.yaml", formats=[{"kind": "debate", "num_speeches": 2}],
                          debaters=[{"name": "a", "model": "r", "best_of_n": 2, "opponent_n": 2, "selection": "maxmin"},
                                    {"name": "b", "model": "r"}],
                          preferences={"mode": "best_of_n", "reward": "prob", "pairing": "best_worst"})
    out = tmp_path / "out"
    assert tournament_main(["--config", str(cfg), "--output", str(out), "--progress", "false", "--report", "false"]) == 0
    scored = [c for r in read_results(out) for s in r.speeches if s.get("candidates") for c in s["candidates"]
              if c.get("opponent_scores")]  # a's last speech has no reply to wait for: scored alone
    assert scored and all(len(c["opponent_scores"]) == 2 and c["score"] == min(c["opponent_scores"]) for c in scored)

    branched = scripted_config(tmp_path / "b.yaml", formats=[{"kind": "debate", "num_speeches": 2}],
                               preferences={"mode": "branched_single_random", "branches": 3, "reward": "logit"})
    out = tmp_path / "branched"
    assert tournament_main(["--config", str(branched), "--output", str(out), "--progress", "false", "--report", "false"]) == 0
    assert read_preferences(out / "preferences.jsonl")
