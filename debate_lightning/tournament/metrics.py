"""Numbers a tournament answers research questions with; pure functions of saved round results.

Every function takes ``RoundResult``s (only rounds with ``status == "ok"`` and a verdict count)
and returns plain dicts of floats, so ``metrics.json`` holds every number the report shows.

Intervals are 95% percentile bootstraps that resample **questions** (``rounds.py`` says why).
Resampling the same question draws for two statistics makes their difference a *paired*
bootstrap (debate vs consultancy).

Imports go one way: ``rounds`` <- ``bradley_terry`` <- ``metrics``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.formats import Format
from debate_lightning.tournament.bradley_terry import bradley_terry, fit_bradley_terry, win_counts
from debate_lightning.tournament.rounds import (
    DEFAULT_BOOTSTRAP,
    bootstrap_means,
    draw_weights,
    format_family,
    format_name,
    interval,
    judged,
    matchup,
    mean_ci,
    p_correct,
    question_key,
)

# The round helpers, the bootstrap and Bradley–Terry live in their own modules; callers import
# them from here as well (``from debate_lightning.tournament.metrics import bradley_terry``).
__all__ = [
    "DEFAULT_BOOTSTRAP", "bootstrap_means", "format_family", "format_name", "interval", "judged", "matchup",
    "mean_ci", "p_correct", "question_key", "bradley_terry", "fit_bradley_terry", "win_counts",
    "accuracy", "grouped", "accuracy_table", "accuracy_difference", "calibration", "auroc", "judge_comparison",
    "side_win_rates", "side_order_pairs", "quote_statistics", "compute_metrics",
]


# --------------------------------------------------------------------------- accuracy


def accuracy(results: Sequence[RoundResult], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """Binary accuracy (the verdict names the correct answer; P(A) = 0.5 counts as A, the
    engine's rule) and probabilistic accuracy (mean judge probability of the correct answer)."""
    rs = judged(results)
    clusters = [question_key(r) for r in rs]
    return {
        "rounds": len(rs),
        "binary": mean_ci([float(bool(r.judge_correct)) for r in rs], clusters, n_boot, seed),
        "prob": mean_ci([p_correct(r) for r in rs], clusters, n_boot, seed),
    }


def grouped(results: Sequence[RoundResult], key: Callable[[RoundResult], str]) -> dict[str, list[RoundResult]]:
    groups: dict[str, list[RoundResult]] = defaultdict(list)
    for r in judged(results):
        groups[key(r)].append(r)
    return dict(sorted(groups.items()))


def accuracy_table(results: Sequence[RoundResult], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """Accuracy overall, per format, per format family, and per (format, matchup)."""
    return {
        "overall": accuracy(results, n_boot, seed),
        "by_format": {k: accuracy(v, n_boot, seed) for k, v in grouped(results, format_name).items()},
        "by_family": {k: accuracy(v, n_boot, seed) for k, v in grouped(results, format_family).items()},
        "by_matchup": {
            k: accuracy(v, n_boot, seed)
            for k, v in grouped(results, lambda r: f"{format_name(r)}: {matchup(r)}").items()
        },
    }


def accuracy_difference(
    results: Sequence[RoundResult],
    family_a: str = "debate",
    family_b: str = "consultancy",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict | None:
    """Accuracy of ``family_a`` minus ``family_b`` on the questions both were played on.

    A paired bootstrap: each replicate draws questions once and computes both accuracies on the
    same draw, so question difficulty cancels out of the difference's interval.
    """
    rs = [r for r in judged(results) if format_family(r) in (family_a, family_b)]
    by_q: dict[str, set[str]] = defaultdict(set)
    for r in rs:
        by_q[question_key(r)].add(format_family(r))
    shared = {q for q, fams in by_q.items() if fams == {family_a, family_b}}
    rs = [r for r in rs if question_key(r) in shared]
    if not shared:
        return None
    out: dict[str, Any] = {"a": family_a, "b": family_b, "questions": len(shared)}
    for kind, value in (("binary", lambda r: float(bool(r.judge_correct))), ("prob", p_correct)):
        sides = {}
        reps = {}
        for fam in (family_a, family_b):
            sub = [r for r in rs if format_family(r) == fam]
            vals = [value(r) for r in sub]
            # Same seed -> same question draws for both families (a paired bootstrap) only if the
            # cluster index is shared, so index clusters over the shared set, in sorted order.
            reps[fam] = _paired_replicates(vals, [question_key(r) for r in sub], sorted(shared), n_boot, seed)
            sides[fam] = float(np.mean(vals))
        diff = reps[family_a] - reps[family_b]
        lo, hi = interval(diff)
        out[kind] = {
            family_a: sides[family_a],
            family_b: sides[family_b],
            "difference": sides[family_a] - sides[family_b],
            "ci": [lo, hi],
            "p_two_sided": _bootstrap_p(diff),
        }
    return out


def _paired_replicates(values, clusters, all_keys: list[str], n_boot: int, seed: int) -> np.ndarray:
    index = {k: i for i, k in enumerate(all_keys)}
    idx = np.array([index[c] for c in clusters])
    sums = np.bincount(idx, weights=np.asarray(values, float), minlength=len(all_keys))
    counts = np.bincount(idx, minlength=len(all_keys)).astype(float)
    weights = draw_weights(len(all_keys), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ sums) / (weights @ counts)


def _bootstrap_p(diff: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0: twice the smaller tail mass."""
    d = diff[np.isfinite(diff)]
    if d.size == 0:
        return math.nan
    return float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))


# --------------------------------------------------------------------------- calibration


def calibration(results: Sequence[RoundResult], n_bins: int = 10) -> dict:
    """Calibration of the judge's P(A) against "A is correct".

    ``ece`` is torchmetrics' ``BinaryCalibrationError`` (L1, ``n_bins`` equal-width bins):
    sum_b (n_b / N) |acc_b - conf_b|, with conf_b the mean P(A) in bin b and acc_b the share of
    its rounds whose correct answer is A. ``ece_top_label`` is the same on the judge's confidence
    in its own verdict (max(P(A), P(B)) against "the verdict is correct"). ``bins`` are the
    reliability diagram: torchmetrics' binning (``bucketize(p, edges, right=True) - 1``, so
    P(A) = 1.0 gets a bin of its own), non-empty bins only.
    """
    import torch
    from torchmetrics.classification import BinaryCalibrationError

    rs = judged(results)
    if not rs:
        return {"rounds": 0, "ece": math.nan, "ece_top_label": math.nan, "bins": []}
    p = torch.tensor([r.p_a for r in rs], dtype=torch.float64)
    y = torch.tensor([int(r.correct_index == 0) for r in rs])
    ece = BinaryCalibrationError(n_bins=n_bins, norm="l1")(p, y).item()
    conf = torch.maximum(p, 1 - p)
    hit = torch.tensor([int(bool(r.judge_correct)) for r in rs])
    ece_top = BinaryCalibrationError(n_bins=n_bins, norm="l1")(conf, hit).item()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(p, edges, right=True) - 1
    bins = []
    for b in sorted(set(idx.tolist())):
        mask = idx == b
        bins.append(
            {
                "lower": float(edges[min(b, n_bins)]),
                "upper": float(edges[min(b + 1, n_bins)]),
                "count": int(mask.sum()),
                "mean_p_a": float(p[mask].mean()),
                "frac_a_correct": float(y[mask].double().mean()),
            }
        )
    return {"rounds": len(rs), "n_bins": n_bins, "ece": ece, "ece_top_label": ece_top, "bins": bins}


# --------------------------------------------------------------------------- discrimination


def auroc(results: Sequence[RoundResult]) -> dict:
    """AUROC of the judge's P(A) against "A is correct" (torchmetrics ``BinaryAUROC``, exact):
    the chance that a random round whose answer A is correct gets a higher P(A) than a random
    round whose answer B is, ties counting half. Calibration-free: a probe whose scores rank
    rounds well but sit near 0.5 still scores high. NaN when every round has the same answer."""
    import torch
    from torchmetrics.classification import BinaryAUROC

    rs = judged(results)
    y = [int(r.correct_index == 0) for r in rs]
    out = {"rounds": len(rs), "a_correct": sum(y), "auroc": math.nan}
    if 0 < sum(y) < len(y):
        p = torch.tensor([r.p_a for r in rs], dtype=torch.float64)
        out["auroc"] = BinaryAUROC()(p, torch.tensor(y)).item()
    return out


def judge_comparison(by_judge: dict[str, Sequence[RoundResult]]) -> dict | None:
    """Judges side by side on the rounds they all judged (matched by ``round_id``): binary and
    probabilistic accuracy, AUROC and ECE of each, and per pair of judges the agreement (share of
    the rounds both judged where both picked the same answer). None with fewer than two judges
    or no round judged by two.
    ``probe`` marks judges whose P(A) came from a linear probe (``models/probe.py``)."""
    from debate_lightning.models.probe import is_probe_judge

    judged_by = {name: {r.round_id: r for r in judged(rs)} for name, rs in sorted(by_judge.items())}
    judged_by = {name: rounds for name, rounds in judged_by.items() if rounds}
    if len(judged_by) < 2:
        return None
    names = list(judged_by)
    if not any(set(judged_by[a]) & set(judged_by[b]) for i, a in enumerate(names) for b in names[i + 1 :]):
        return None  # no round judged twice (e.g. shards judged by different judges): nothing to match
    common = set.intersection(*(set(rounds) for rounds in judged_by.values()))
    table = {}
    for name, rounds in judged_by.items():
        rs = [rounds[i] for i in sorted(common)]
        table[name] = {
            "probe": is_probe_judge(name),
            "rounds_judged": len(rounds),
            "rounds": len(rs),
            "binary_accuracy": float(np.mean([bool(r.judge_correct) for r in rs])) if rs else math.nan,
            "prob_accuracy": float(np.mean([p_correct(r) for r in rs])) if rs else math.nan,
            "auroc": auroc(rs)["auroc"],
            "ece": calibration(rs)["ece"],
        }
    agreement = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(judged_by[a]) & set(judged_by[b]))
            same = sum(judged_by[a][k].winner == judged_by[b][k].winner for k in shared)
            agreement.append({"a": a, "b": b, "rounds": len(shared), "agreement": same / len(shared) if shared else math.nan})
    return {"judges": names, "common_rounds": len(common), "table": table, "agreement": agreement}


# --------------------------------------------------------------------------- sides


def side_win_rates(results: Sequence[RoundResult], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """Per format: how often the judge sides with position A (side 0) and with the correct side.

    In a sequential debate side 0 speaks first, so ``first_speaker`` is side 0's win rate; in a
    consultancy it is the consultant's win rate, split by whether it argued the correct answer.
    Per debater (two-advocate rounds): win rate overall, on the correct / incorrect side, and as
    first / second speaker (position A / B).
    """
    out: dict[str, Any] = {}
    for fmt, rs in grouped(results, format_name).items():
        cl = [question_key(r) for r in rs]
        f = Format(**rs[0].format)
        entry: dict[str, Any] = {}
        if f.kind == "consultancy":
            s = f.consultant_side
            wins = [float(r.winner == s) for r in rs]
            correct = [r.correct_index == s for r in rs]
            entry["consultant"] = mean_ci(wins, cl, n_boot, seed)
            entry["consultant_correct_side"] = mean_ci(
                [w for w, c in zip(wins, correct) if c], [k for k, c in zip(cl, correct) if c], n_boot, seed
            )
            entry["consultant_incorrect_side"] = mean_ci(
                [w for w, c in zip(wins, correct) if not c], [k for k, c in zip(cl, correct) if not c], n_boot, seed
            )
        else:
            entry["first_speaker"] = mean_ci([float(r.winner == 0) for r in rs], cl, n_boot, seed)
            entry["correct_side"] = mean_ci([float(r.winner == r.correct_index) for r in rs], cl, n_boot, seed)
            entry["by_debater"] = _per_debater(rs, n_boot, seed)
        out[fmt] = entry
    return out


def _per_debater(rs: Sequence[RoundResult], n_boot: int, seed: int) -> dict:
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        for side in (0, 1):
            name = r.debaters[side]
            if not name or r.debaters[0] == r.debaters[1]:
                continue
            won = float(r.winner == side)
            q = question_key(r)
            for split in ("all", "correct" if side == r.correct_index else "incorrect", "first" if side == 0 else "second"):
                rows[name][split].append((won, q))
    return {
        name: {split: mean_ci([v for v, _ in vals], [q for _, q in vals], n_boot, seed) for split, vals in sorted(d.items())}
        for name, d in sorted(rows.items())
    }


# --------------------------------------------------------------------------- paired side orders


def side_order_pairs(results: Sequence[RoundResult]) -> dict:
    """A paired test across the two side orders of each question.

    A pair is two rounds with the same question, format, debaters (by side) and repeat, one with
    the correct answer in position A and one in position B. The test is McNemar's exact test:
    among discordant pairs (the judge right in one order only), under H0 "the judge is as
    accurate whatever position the correct answer is in" the count of pairs right only in the
    A-order is Binomial(discordant, 1/2); the two-sided p-value is scipy's ``binomtest``. A
    paired bootstrap interval is given for the mean difference in probabilistic accuracy
    (A-order minus B-order). ``consistent`` is the share of pairs where the judge picked the same
    answer in both orders.
    """
    from scipy.stats import binomtest

    by_key: dict[tuple, dict[int, RoundResult]] = defaultdict(dict)
    for r in judged(results):
        key = (str(r.question.get("question_id")), format_name(r), tuple(r.debaters), r.repeat)
        by_key[key][r.correct_index] = r
    pairs = [(d[0], d[1]) for d in by_key.values() if 0 in d and 1 in d]
    if not pairs:
        return {"pairs": 0}
    a_only = sum(1 for a, b in pairs if a.judge_correct and not b.judge_correct)
    b_only = sum(1 for a, b in pairs if b.judge_correct and not a.judge_correct)
    both = sum(1 for a, b in pairs if a.judge_correct and b.judge_correct)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    diffs = [p_correct(a) - p_correct(b) for a, b in pairs]
    clusters = [question_key(a) for a, _ in pairs]
    return {
        "pairs": len(pairs),
        "both_correct": both,
        "both_wrong": len(pairs) - both - a_only - b_only,
        "correct_only_when_a": a_only,
        "correct_only_when_b": b_only,
        "mcnemar_exact_p": float(p),
        "consistent": (both + len(pairs) - both - a_only - b_only) / len(pairs),
        "prob_difference_a_minus_b": mean_ci(diffs, clusters),
    }


# --------------------------------------------------------------------------- quotes


def quote_statistics(results: Sequence[RoundResult]) -> dict:
    """Per speech: quotes, share valid, valid words; split by winner/loser and correct/incorrect.

    ``share_valid`` pools quotes (valid quotes / all quotes of the group's speeches);
    ``speeches_with_quotes`` is the share of speeches that quote at all.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in judged(results):
        for s in r.speeches:
            if s.get("error"):
                continue
            groups["all"].append(s)
            groups["winner" if s["side"] == r.winner else "loser"].append(s)
            groups["correct_side" if s["side"] == r.correct_index else "incorrect_side"].append(s)
    out = {}
    for name in ("all", "winner", "loser", "correct_side", "incorrect_side"):
        speeches = groups.get(name, [])
        n = len(speeches)
        quotes = [q for s in speeches for q in s.get("quotes", [])]
        valid = [q for q in quotes if q["valid"]]
        out[name] = {
            "speeches": n,
            "quotes_per_speech": len(quotes) / n if n else math.nan,
            "share_valid": len(valid) / len(quotes) if quotes else math.nan,
            "valid_words_per_speech": sum(len(q["text"].split()) for q in valid) / n if n else math.nan,
            "speeches_with_quotes": sum(1 for s in speeches if s.get("quotes")) / n if n else math.nan,
        }
    return out


# --------------------------------------------------------------------------- everything


def compute_metrics(
    results: Sequence[RoundResult], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, bt_l2: float = 0.01,
    by_judge: dict[str, Sequence[RoundResult]] | None = None,
) -> dict:
    """Every metric of a tournament, as one JSON-serialisable dict (``metrics.json``).

    ``by_judge``: rounds per judge name, where several judges judged the same rounds (a run and
    its ``rejudge``); they are compared side by side (``judge_comparison``). Default: ``results``
    grouped by their judge."""
    ok = judged(results)
    families = sorted({format_family(r) for r in ok})
    comparisons = []
    for a, b in (("debate", "consultancy"), ("debate", "double_consultancy"), ("double_consultancy", "consultancy")):
        if a in families and b in families:
            d = accuracy_difference(results, a, b, n_boot, seed)
            if d is not None:
                comparisons.append(d)
    return {
        "rounds": {
            "total": len(results),
            "judged": len(ok),
            "failed": sum(1 for r in results if not r.ok),
            "no_verdict": sum(1 for r in results if r.ok and r.p_a is None),
        },
        "judges": sorted({r.judge for r in ok}),
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "question", "level": 0.95},
        "accuracy": accuracy_table(results, n_boot, seed),
        "format_comparisons": comparisons,
        "calibration": calibration(results),
        "p_a_values": [r.p_a for r in ok],
        "calibration_by_format": {k: calibration(v) for k, v in grouped(results, format_name).items()},
        "auroc": {"overall": auroc(results), "by_format": {k: auroc(v) for k, v in grouped(results, format_name).items()}},
        "bradley_terry": bradley_terry(results, l2=bt_l2, n_boot=min(n_boot, 200), seed=seed),
        "sides": side_win_rates(results, n_boot, seed),
        "side_order_test": side_order_pairs(results),
        "side_order_test_by_format": {k: side_order_pairs(v) for k, v in grouped(results, format_name).items()},
        "quotes": quote_statistics(results),
        "judge_comparison": judge_comparison(by_judge if by_judge is not None else _by_judge(results)),
    }


def _by_judge(results: Sequence[RoundResult]) -> dict[str, list[RoundResult]]:
    groups: dict[str, list[RoundResult]] = defaultdict(list)
    for r in results:
        groups[r.judge].append(r)
    return dict(groups)

