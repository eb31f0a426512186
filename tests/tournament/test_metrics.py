"""Metrics against numbers computed by hand on small fixed result sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from tournament_helpers import make_result

from debate_lightning.tournament import bradley_terry as BT
from debate_lightning.tournament import metrics as M

# Two questions in both side orders; P(A) avoids bin edges. Hand values:
#   q1 c0 p=.85 right (P(correct) .85) | q1 c1 p=.65 wrong (.35) | q2 c0 p=.35 wrong (.35) | q2 c1 p=.15 right (.85)
FOUR = [make_result("q1", 0, 0.85), make_result("q1", 1, 0.65), make_result("q2", 0, 0.35), make_result("q2", 1, 0.15)]


def test_accuracy_binary_and_probabilistic():
    a = M.accuracy(FOUR)
    assert a["rounds"] == 4
    assert a["binary"]["mean"] == pytest.approx(0.5)
    assert a["prob"]["mean"] == pytest.approx((0.85 + 0.35 + 0.35 + 0.85) / 4)
    lo, hi = a["binary"]["ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    # Every question right in both orders: no uncertainty left to resample.
    perfect = M.accuracy([make_result("q1", 0, 0.9), make_result("q1", 1, 0.2), make_result("q2", 0, 0.7)])
    assert perfect["binary"]["mean"] == 1.0 and perfect["binary"]["ci"] == [1.0, 1.0]


def test_failed_and_verdictless_rounds_are_excluded():
    rs = FOUR + [make_result("q3", 0, 0.9, status="failed"), make_result("q4", 0, None)]
    assert M.accuracy(rs)["rounds"] == 4
    assert M.compute_metrics(rs, n_boot=50)["rounds"] == {"total": 6, "judged": 4, "failed": 1, "no_verdict": 1}


def test_bootstrap_resamples_questions_not_rounds():
    # q1: both rounds right; q2: both wrong. Resampling questions gives only 0, .5 or 1.
    rs = [make_result("q1", 0, 0.9), make_result("q1", 1, 0.1), make_result("q2", 0, 0.1), make_result("q2", 1, 0.9)]
    vals = [float(r.judge_correct) for r in rs]
    reps = M.bootstrap_means(vals, [M.question_key(r) for r in rs], n_boot=400)
    assert set(np.round(reps, 6)) <= {0.0, 0.5, 1.0}


def test_ece_matches_hand_computation():
    # Each round alone in its bin, weight 1/4: |1-.85| + |0-.65| + |1-.35| + |0-.15| = 1.6 -> 0.4
    cal = M.calibration(FOUR)
    assert cal["ece"] == pytest.approx(0.4)
    # Top label: confidences .85 (right, right) and .65 (wrong, wrong): .5*.15 + .5*.65 = .4
    assert cal["ece_top_label"] == pytest.approx(0.4)
    assert [b["count"] for b in cal["bins"]] == [1, 1, 1, 1]
    # Two rounds sharing a bin pool: conf .85, acc .5 -> .35
    pooled = M.calibration([make_result("q1", 0, 0.82), make_result("q2", 1, 0.88)])
    assert pooled["ece"] == pytest.approx(0.35)
    assert pooled["bins"] == [{"lower": 0.8, "upper": 0.9, "count": 2, "mean_p_a": pytest.approx(0.85), "frac_a_correct": 0.5}]
    # The reliability bins reproduce the ECE: sum_b n_b/N |acc_b - conf_b|.
    n = sum(b["count"] for b in cal["bins"])
    assert sum(b["count"] / n * abs(b["frac_a_correct"] - b["mean_p_a"]) for b in cal["bins"]) == pytest.approx(cal["ece"])


def test_bradley_terry_two_players_closed_form():
    theta = BT.fit_bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), l2=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-6)
    assert theta.sum() == pytest.approx(0.0, abs=1e-9)
    shrunk = BT.fit_bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), l2=1.0)
    assert 0 < shrunk[0] - shrunk[1] < math.log(3)


def _games(wins: dict[tuple[str, str], int]):
    """Rounds realising a win table: winner on side 0, a new question per game."""
    out, k = [], 0
    for (w, l), n in wins.items():
        for _ in range(n):
            k += 1
            out.append(make_result(f"g{k}", 0, 0.9, debaters=(w, l)))
    return out


def test_bradley_terry_three_player_toy_ranking_and_mle():
    table = {("A", "B"): 6, ("B", "A"): 4, ("B", "C"): 6, ("C", "B"): 4, ("A", "C"): 8, ("C", "A"): 2}
    bt = BT.bradley_terry(_games(table), l2=0.0, n_boot=50)
    assert bt["ranking"] == ["A", "B", "C"]
    assert bt["games"] == 30
    names, w = BT.win_counts(_games(table))
    theta = np.array([bt["ratings"][n]["theta"] for n in names])
    # MLE: every player's observed wins equal its expected wins sum_j n_ij sigmoid(theta_i - theta_j).
    expected = ((w + w.T) * expit(theta[:, None] - theta[None, :])).sum(1)
    np.testing.assert_allclose(expected, w.sum(1), atol=1e-6)
    pred = bt["predicted_win"]
    assert pred["A"]["C"] > pred["A"]["B"] > 0.5 and pred["A"]["B"] + pred["B"]["A"] == pytest.approx(1.0)
    for n in names:
        lo, hi = bt["ratings"][n]["theta_ci"]
        assert lo <= hi
    assert bt["ratings"]["A"]["elo"] > 1000 > bt["ratings"]["C"]["elo"]
    assert bt["win_counts"]["A"]["C"] == 8 and bt["observed_win"]["A"]["C"] == pytest.approx(0.8)


def test_bradley_terry_needs_two_distinct_debaters():
    assert BT.bradley_terry([make_result("q1", 0, 0.9, debaters=("x", "x"))]) is None


def test_side_order_pairs_mcnemar():
    # 5 questions right only when the correct answer is A, none only when B: p = 2 * 0.5**5.
    rs = []
    for k in range(5):
        rs += [make_result(f"q{k}", 0, 0.9), make_result(f"q{k}", 1, 0.9)]  # always says A
    rs += [make_result("q9", 0, 0.8), make_result("q9", 1, 0.2)]  # right in both
    t = M.side_order_pairs(rs)
    assert t["pairs"] == 6 and t["correct_only_when_a"] == 5 and t["correct_only_when_b"] == 0
    assert t["both_correct"] == 1 and t["both_wrong"] == 0
    assert t["mcnemar_exact_p"] == pytest.approx(2 * 0.5**5)
    assert t["consistent"] == pytest.approx(1 / 6)
    # P(correct) differences: 5 x (.9 - .1) and (.8 - .8)
    assert t["prob_difference_a_minus_b"]["mean"] == pytest.approx(5 * 0.8 / 6)


def test_side_win_rates():
    s = M.side_win_rates(FOUR, n_boot=50)["debate"]
    assert s["first_speaker"]["mean"] == pytest.approx(0.5)  # A chosen for .85 and .65
    assert s["correct_side"]["mean"] == pytest.approx(0.5)
    x = s["by_debater"]["x"]  # x is always side 0: wins the two rounds with P(A) > .5
    assert x["all"]["mean"] == pytest.approx(0.5) and x["first"]["mean"] == pytest.approx(0.5)
    assert x["correct"]["mean"] == pytest.approx(0.5) and x["correct"]["n"] == 2  # q1c0 win, q2c0 loss
    cons = M.side_win_rates([make_result("q1", 0, 0.7, kind="consultancy", debaters=("x", "")),
                             make_result("q1", 1, 0.7, kind="consultancy", debaters=("x", ""))], n_boot=20)["consultancy0"]
    assert cons["consultant_correct_side"]["mean"] == 1.0 and cons["consultant_incorrect_side"]["mean"] == 1.0


def test_quote_statistics_split_by_winner_and_side():
    r = make_result("q1", 0, 0.8, quotes=[[("Ann found the key", True), ("made up words", False)], [("Bob was at the station", True)]])
    q = M.quote_statistics([r])
    assert q["winner"] == {"speeches": 1, "quotes_per_speech": 2.0, "share_valid": 0.5, "valid_words_per_speech": 4.0,
                           "speeches_with_quotes": 1.0}
    assert q["loser"]["valid_words_per_speech"] == 5.0 and q["loser"]["share_valid"] == 1.0
    assert q["correct_side"] == q["winner"] and q["incorrect_side"] == q["loser"]
    assert q["all"]["quotes_per_speech"] == 1.5 and q["all"]["share_valid"] == pytest.approx(2 / 3)


def test_debate_vs_consultancy_difference_is_paired():
    rs = [
        make_result("q1", 0, 0.9), make_result("q1", 1, 0.1),  # debate right twice
        make_result("q2", 0, 0.1), make_result("q2", 1, 0.9),  # debate wrong twice
        make_result("q1", 0, 0.3, kind="consultancy", debaters=("x", "")),  # wrong
        make_result("q1", 1, 0.3, kind="consultancy", debaters=("x", "")),  # right
        make_result("q2", 0, 0.9, kind="consultancy", debaters=("x", "")),  # right
        make_result("q2", 1, 0.3, kind="consultancy", debaters=("x", "")),  # right
        make_result("q3", 0, 0.9),  # debate only: not shared, left out of the comparison
    ]
    d = M.accuracy_difference(rs, "debate", "consultancy", n_boot=500)
    assert d["questions"] == 2
    assert d["binary"]["debate"] == 0.5 and d["binary"]["consultancy"] == 0.75
    assert d["binary"]["difference"] == pytest.approx(-0.25)
    lo, hi = d["binary"]["ci"]
    # Paired draws: {q1,q1} -> 1 - .5 = .5, {q2,q2} -> 0 - 1 = -1, {q1,q2} -> -.25.
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(0.5)
    m = M.compute_metrics(rs, n_boot=100)
    assert m["format_comparisons"][0]["a"] == "debate" and m["format_comparisons"][0]["b"] == "consultancy"
