"""Which saved rounds count, how they cluster by question, and the question bootstrap.

The ground every tournament statistic stands on: ``metrics`` and ``bradley_terry`` both build on
these helpers (and nothing here imports either of them, so the two never import each other in a
circle).

Intervals are 95% percentile bootstraps that resample **questions**, not rounds: the two side
orders of a question (and every matchup and format played on it) share the question's
difficulty, so resampling rounds would understate the uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.formats import Format

DEFAULT_BOOTSTRAP = 1000


# --------------------------------------------------------------------------- helpers on rounds


def judged(results: Sequence[RoundResult]) -> list[RoundResult]:
    """Rounds that finished and have a verdict."""
    return [r for r in results if r.ok and r.p_a is not None and r.winner is not None]


def format_name(r: RoundResult) -> str:
    return Format(**r.format).name


def format_family(r: RoundResult) -> str:
    return Format(**r.format).family


def matchup(r: RoundResult) -> str:
    """``a vs b`` (names sorted, sides ignored), ``a (self-play)``, or the consultant's name."""
    names = [n for n in r.debaters if n]
    if len(names) == 2 and names[0] == names[1]:
        return f"{names[0]} (self-play)"
    return " vs ".join(sorted(names)) or "(no speakers)"


def p_correct(r: RoundResult) -> float:
    """The judge's probability for the correct answer (probabilistic accuracy of one round)."""
    assert r.p_a is not None
    return r.p_a if r.correct_index == 0 else 1.0 - r.p_a


def question_key(r: RoundResult) -> str:
    """Clusters for the bootstrap: a question whatever its side order."""
    return str(r.question.get("question_id", r.question.get("uid", r.round_id)))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_means(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[str],
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap replicates of the mean of ``values``, resampling whole clusters.

    Returns ``n_boot`` replicates of sum(w_c * S_c) / sum(w_c * N_c) where S_c, N_c are a
    cluster's sum and count and w_c ~ Multinomial(C, 1/C) are its draw counts.
    """
    values = np.asarray(values, dtype=float)
    keys, idx = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(idx, weights=values, minlength=len(keys))
    counts = np.bincount(idx, minlength=len(keys)).astype(float)
    weights = draw_weights(len(keys), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ sums) / (weights @ counts)


def draw_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each cluster is drawn in each of ``n_boot`` resamples of ``n_clusters``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(float)


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    reps = replicates[np.isfinite(replicates)]
    if reps.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], clusters: Sequence[str], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """``{"n", "mean", "ci": [lo, hi]}`` for a cluster-bootstrapped mean."""
    if len(values) == 0:
        return {"n": 0, "mean": math.nan, "ci": [math.nan, math.nan]}
    mean = float(np.mean(np.asarray(values, dtype=float)))
    lo, hi = interval(bootstrap_means(values, clusters, n_boot, seed))
    return {"n": len(values), "mean": mean, "ci": [lo, hi]}
