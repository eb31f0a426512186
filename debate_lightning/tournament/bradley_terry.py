"""Bradley–Terry ratings of debaters from the verdicts of their rounds against each other."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from debate_lightning.debate.engine import RoundResult
from debate_lightning.tournament.rounds import interval, judged, question_key


def win_counts(results: Sequence[RoundResult], players: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """W[i, j] = rounds player i won against player j (two-advocate rounds of two different
    debaters; self-play and consultancy carry no information about relative strength)."""
    games = _games(results)
    names = sorted({n for g in games for n in g[:2]}) if players is None else list(players)
    index = {n: i for i, n in enumerate(names)}
    w = np.zeros((len(names), len(names)))
    for winner, loser, _ in games:
        w[index[winner], index[loser]] += 1
    return names, w


def _games(results: Sequence[RoundResult]) -> list[tuple[str, str, str]]:
    out = []
    for r in judged(results):
        a, b = r.debaters
        if a and b and a != b:
            w = r.debaters[r.winner]
            out.append((w, b if w == a else a, question_key(r)))
    return out


def fit_bradley_terry(wins: np.ndarray, l2: float = 0.01) -> np.ndarray:
    """Bradley–Terry strengths by penalised maximum likelihood (Bradley & Terry 1952).

    P(i beats j) = sigmoid(theta_i - theta_j). Minimises
    -sum_ij W_ij log sigmoid(theta_i - theta_j) + (l2 / 2) sum_i theta_i^2
    with Newton-CG; the L2 term (a Gaussian prior) makes the optimum unique and finite even when a
    player never lost. The result is centred to mean 0 (the likelihood ignores a shared shift).
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    k = wins.shape[0]
    if k == 0:
        return np.zeros(0)

    def objective(theta):
        d = theta[:, None] - theta[None, :]
        nll = -(wins * log_expit(d)).sum() + 0.5 * l2 * (theta**2).sum()
        s = expit(d)  # s[i, j] = P(i beats j)
        grad = -(wins * (1 - s)).sum(1) + (wins.T * s).sum(1) + l2 * theta
        return nll, grad

    def hessian(theta):
        s = expit(theta[:, None] - theta[None, :])
        c = (wins + wins.T) * s * (1 - s)
        return np.diag(c.sum(1)) - c + l2 * np.eye(k)

    # Newton-CG with the exact Hessian: the problem is tiny and convex (L-BFGS-B is 20x slower here).
    res = minimize(objective, np.zeros(k), jac=True, hess=hessian, method="Newton-CG", options={"xtol": 1e-10})
    theta = res.x
    return theta - theta.mean()


def bradley_terry(
    results: Sequence[RoundResult], l2: float = 0.01, n_boot: int = 200, seed: int = 0
) -> dict | None:
    """Ratings (log-odds scale and Elo scale), bootstrap intervals, and the predicted win matrix.

    Elo = 1000 + theta * 400 / ln(10), so 400 Elo points are 10:1 odds. The bootstrap resamples
    questions (all games on a drawn question come along) and refits.
    """
    games = _games(results)
    names = sorted({n for g in games for n in g[:2]})
    if len(names) < 2:
        return None
    _, w = win_counts(results, names)
    theta = fit_bradley_terry(w, l2)
    index = {n: i for i, n in enumerate(names)}
    by_q: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for winner, loser, q in games:
        by_q[q].append((index[winner], index[loser]))
    qs = sorted(by_q)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        wb = np.zeros_like(w)
        for qi in rng.integers(0, len(qs), len(qs)):
            for i, j in by_q[qs[qi]]:
                wb[i, j] += 1
        reps.append(fit_bradley_terry(wb, l2))
    reps_arr = np.array(reps) if reps else np.zeros((0, len(names)))
    elo = 400 / math.log(10)
    ratings = {}
    for i, n in enumerate(names):
        lo, hi = interval(reps_arr[:, i]) if n_boot else (math.nan, math.nan)
        ratings[n] = {
            "theta": float(theta[i]),
            "theta_ci": [lo, hi],
            "elo": 1000 + elo * float(theta[i]),
            "elo_ci": [1000 + elo * lo, 1000 + elo * hi],
            "wins": int(w[i].sum()),
            "losses": int(w[:, i].sum()),
        }
    pred = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = w / (w + w.T)
    return {
        "players": names,
        "l2": l2,
        "games": len(games),
        "ratings": ratings,
        "ranking": [names[i] for i in np.argsort(-theta)],
        "predicted_win": {a: {b: float(pred[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)},
        "observed_win": {
            a: {b: (None if not np.isfinite(observed[i, j]) else float(observed[i, j])) for j, b in enumerate(names)}
            for i, a in enumerate(names)
        },
        "win_counts": {a: {b: int(w[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)},
    }
