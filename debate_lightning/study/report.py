"""The study report: ``OUT/metrics.json`` (every number), ``OUT/report.md`` and PNGs, from the
evaluation tournament (``OUT/eval``) and, where a probe is configured, its rejudge (``OUT/eval_probe``).

Every statistic is the tournament package's own (``tournament/metrics.py``): accuracies with 95%
bootstraps that resample questions, the paired bootstrap of debate minus consultancy,
torchmetrics' ECE, penalised Bradley–Terry ratings. This module only cuts the evaluation's rounds
by checkpoint: a checkpoint's *debate* rounds are its self-play debates (both sides the same
checkpoint; cross-play debates feed the ratings), its *consultancy* rounds those it argued as
the consultant; the *blind* rounds (no speeches) belong to no checkpoint.

The markdown is rendered from the metrics dict after it was written to metrics.json and read back,
so each number in the report is the one in the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from statistics import NormalDist
from typing import Any

from debate_lightning.study.plan import StudyConfig
from debate_lightning.tournament.metrics import (
    accuracy,
    accuracy_difference,
    bradley_terry,
    calibration,
    format_family,
    format_name,
    grouped,
    judge_comparison,
    judged,
    question_key,
)
from debate_lightning.tournament.results import ResultsFile

ALPHA, POWER = 0.05, 0.8


def write_study_report(out: str | Path, cfg: StudyConfig) -> dict:
    out = Path(out)
    metrics = _clean(study_metrics(out, cfg))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    metrics = json.loads((out / "metrics.json").read_text())
    images = _plots(metrics, out) if cfg.report.plots else {}
    (out / "report.md").write_text(render(metrics, images))
    return metrics


# --------------------------------------------------------------------------- numbers


def _rounds(directory: Path) -> list:
    results = ResultsFile(directory)
    if not results.path.is_file():
        raise FileNotFoundError(f"no evaluation results in {directory} (expected {results.path}); "
                                "run the study's eval stage first")
    return list(results.latest())


def _self_play(rs: list, c: str) -> list:
    return [r for r in rs if format_family(r) == "debate" and tuple(r.debaters) == (c, c)]


def _consulting(rs: list, c: str) -> list:
    return [r for r in rs if format_family(r) == "consultancy" and c in r.debaters]


def _blind(rs: list) -> list:
    return [r for r in rs if format_family(r) == "empty"]


def cell(rs: list, n_boot: int, seed: int) -> dict:
    """The package's accuracy (binary and probabilistic, question bootstrap) plus the number of
    distinct questions: the independent unit the power analysis counts."""
    return {**accuracy(rs, n_boot, seed), "questions": len({question_key(r) for r in judged(rs)})}


def by_checkpoint(rs: list, checkpoints: list[str], n_boot: int, seed: int) -> dict:
    return {c: {"debate": cell(_self_play(rs, c), n_boot, seed),
                "consultancy": cell(_consulting(rs, c), n_boot, seed)} for c in checkpoints}


def study_metrics(out: Path, cfg: StudyConfig) -> dict:
    rs = _rounds(out / "eval")
    ok = judged(rs)
    names, n_boot, seed = cfg.checkpoints(), cfg.report.bootstrap, cfg.report.seed
    per_checkpoint = by_checkpoint(rs, names, n_boot, seed)
    ratings = bradley_terry(rs, n_boot=min(n_boot, 200), seed=seed)
    differences = {c: accuracy_difference(_self_play(rs, c) + _consulting(rs, c), "debate", "consultancy", n_boot, seed)
                   for c in names}
    m: dict[str, Any] = {
        "study": {"dpo_rounds": cfg.dpo_rounds, "checkpoints": names, "model": cfg.model,
                  "judge": cfg.judge, "probe": cfg.probe, "stage_seconds": stage_seconds(out)},
        "evaluation": {
            "rounds": {"total": len(rs), "judged": len(ok), "failed": sum(1 for r in rs if not r.ok)},
            "questions": len({question_key(r) for r in ok}),
            "judges": sorted({r.judge for r in ok}),
        },
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "question", "level": 0.95},
        "accuracy_by_format": {k: cell(v, n_boot, seed) for k, v in grouped(rs, format_name).items()},
        "accuracy_by_checkpoint": per_checkpoint,
        "blind": cell(_blind(rs), n_boot, seed),
        "bradley_terry": ratings,
        "debate_minus_consultancy": differences,
        "calibration_by_format": {k: calibration(v) for k, v in grouped(rs, format_name).items()},
        "probe": probe_metrics(out, rs, names, n_boot, seed),
    }
    m["power"] = power(m)
    return m


def probe_metrics(out: Path, llm_rounds: list, names: list[str], n_boot: int, seed: int) -> dict | None:
    """The probe judge's accuracy (from the rejudge in ``eval_probe``) beside the LLM judge's, on
    the same rounds; None when the study has no probe."""
    if not ResultsFile(out / "eval_probe").path.is_file():
        return None
    probe = list(ResultsFile(out / "eval_probe").latest())
    judges = sorted({r.judge for r in judged(probe)})
    return {
        "judge": judges[0] if len(judges) == 1 else judges,
        "accuracy_by_format": {k: cell(v, n_boot, seed) for k, v in grouped(probe, format_name).items()},
        "accuracy_by_checkpoint": by_checkpoint(probe, names, n_boot, seed),
        "blind": cell(_blind(probe), n_boot, seed),
        "comparison": judge_comparison({"llm": llm_rounds, "probe": probe}),
    }


def mde_two_proportions(n: int, p: float = 0.5, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimal detectable difference of two proportions with ``n`` independent units per arm:
    (z_{1-alpha/2} + z_power) * sqrt(2 p (1 - p) / n) (normal approximation, two-sided test)."""
    if n <= 0:
        return math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(2 * p * (1 - p) / n)


def mde_one_proportion(n: int, p: float = 0.5, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimal detectable distance of one proportion from ``p`` (e.g. from chance):
    (z_{1-alpha/2} + z_power) * sqrt(p (1 - p) / n)."""
    if n <= 0:
        return math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(p * (1 - p) / n)


def power(m: dict) -> dict:
    """Minimal detectable effects at this run's n. The unit is the question (both side orders of
    a question are correlated, and the bootstrap resamples questions), p = 0.5: the widest case,
    and where a judge without the story starts."""
    per_c = m["accuracy_by_checkpoint"]
    q = min((a["questions"] for c in per_c.values() for a in c.values() if a["rounds"]), default=0)
    significant = [c for c, d in m["debate_minus_consultancy"].items()
                   if d and not (d["binary"]["ci"][0] <= 0 <= d["binary"]["ci"][1])]
    observed = [abs(d["binary"]["difference"]) for d in m["debate_minus_consultancy"].values() if d]
    return {
        "alpha": ALPHA, "power": POWER, "p": 0.5, "questions_per_cell": q,
        "mde_vs_chance": mde_one_proportion(q),
        "mde_between_cells": mde_two_proportions(q),
        "largest_observed_difference": max(observed) if observed else None,
        "checkpoints_with_significant_difference": significant,
        "formula": "MDE = (z_{1-alpha/2} + z_{power}) * sqrt(2 p (1-p) / n) for two proportions; "
                   "(z_{1-alpha/2} + z_{power}) * sqrt(p (1-p) / n) against chance",
    }


def stage_seconds(out: Path) -> dict[str, int]:
    """Seconds each stage took in its last finished run (from ``stages.log``)."""
    out_s: dict[str, int] = {}
    log = out / "stages.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "done" and parts[3].startswith("("):
                out_s[parts[2]] = int(parts[3].strip("("))
    return out_s


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# --------------------------------------------------------------------------- markdown


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ci(stat: dict) -> str:
    lo, hi = stat["ci"]
    return f"{fmt(stat['mean'])} [{fmt(lo)}, {fmt(hi)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _image(images: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[key]})", ""] if key in images else []


def render(m: dict, images: dict[str, str]) -> str:
    s, ev = m["study"], m["evaluation"]
    out = ["# The debate-training study", "",
           f"Checkpoints {', '.join(s['checkpoints'])} (base model `{s['model']}`, {s['dpo_rounds']} DPO rounds), "
           f"judged by {_judge(s['judge'])} on {ev['questions']} held-out "
           f"questions in both side orders: {ev['rounds']['judged']} judged rounds ({ev['rounds']['failed']} failed). "
           f"Intervals are 95% bootstraps over questions ({m['bootstrap']['replicates']} replicates). "
           "Every number here is in metrics.json beside this file.", ""]
    if s["stage_seconds"]:
        out += ["Stage times (s): " + ", ".join(f"{k} {v}" for k, v in s["stage_seconds"].items()) + ".", ""]

    out += ["## Judge accuracy by format", "",
            "All evaluation rounds of each format (debates include cross-play). Binary: the verdict names the "
            "correct answer; probabilistic: the judge's mean probability of the correct answer.", ""]
    out += table(["format", "rounds", "binary accuracy", "probabilistic accuracy"],
                 [[k, str(a["rounds"]), fmt_ci(a["binary"]), fmt_ci(a["prob"])] for k, a in m["accuracy_by_format"].items()])

    out += ["## Judge accuracy by debater checkpoint", "",
            "Debate: the checkpoint against itself. Consultancy: the checkpoint as the consultant, on each side. "
            "Blind: no speeches at all (the same for every checkpoint).", ""]
    rows = []
    for c, a in m["accuracy_by_checkpoint"].items():
        for kind in ("debate", "consultancy"):
            rows.append([c, kind, str(a[kind]["rounds"]), fmt_ci(a[kind]["binary"]), fmt_ci(a[kind]["prob"])])
    b = m["blind"]
    rows.append(["(none)", "blind", str(b["rounds"]), fmt_ci(b["binary"]), fmt_ci(b["prob"])])
    out += table(["checkpoint", "format", "rounds", "binary accuracy", "probabilistic accuracy"], rows)
    out += _image(images, "accuracy_by_checkpoint", "judge accuracy by checkpoint")

    out += ["## Judge accuracy against debater rating", ""]
    bt = m["bradley_terry"]
    if bt is None:
        out += ["No cross-play debates (`evaluation.cross_play: false`), so no Bradley–Terry ratings.", ""]
    else:
        out += [f"Bradley–Terry ratings (penalised MLE, L2 = {bt['l2']}) from {bt['games']} cross-play debates; "
                "Elo = 1000 + 400·θ/ln 10. The paper's main plot: does the judge get more accurate as the "
                "debaters get more persuasive?", ""]
        rows = [[c, fmt(bt["ratings"][c]["elo"], 0),
                 f"[{fmt(bt['ratings'][c]['elo_ci'][0], 0)}, {fmt(bt['ratings'][c]['elo_ci'][1], 0)}]",
                 fmt_ci(m["accuracy_by_checkpoint"][c]["debate"]["binary"])]
                for c in s["checkpoints"] if c in bt["ratings"]]
        out += table(["checkpoint", "Elo", "95% CI", "self-play debate accuracy"], rows)
        out += _image(images, "accuracy_vs_rating", "judge accuracy against debater rating")

    out += ["## Debate minus consultancy", "",
            "Per checkpoint, on the questions both formats were played on; the interval and p-value are a paired "
            "bootstrap (the same question draws for both formats).", ""]
    rows = []
    for c, d in m["debate_minus_consultancy"].items():
        if d is None:
            rows.append([c, "–", "–", "–", "–", "–", "–"])
            continue
        x = d["binary"]
        rows.append([c, str(d["questions"]), fmt(x["debate"]), fmt(x["consultancy"]), fmt(x["difference"]),
                     f"[{fmt(x['ci'][0])}, {fmt(x['ci'][1])}]", fmt(x["p_two_sided"])])
    out += table(["checkpoint", "questions", "debate", "consultancy", "difference", "95% CI", "bootstrap p"], rows)
    out += _image(images, "debate_minus_consultancy", "debate minus consultancy")

    out += ["## Calibration by format", "",
            "ECE (torchmetrics, L1, 10 bins) of P(A) against 'A is correct', and of the judge's confidence in its verdict.", ""]
    out += table(["format", "rounds", "ECE P(A)", "ECE top-label"],
                 [[k, str(c["rounds"]), fmt(c["ece"]), fmt(c["ece_top_label"])] for k, c in m["calibration_by_format"].items()])
    out += _image(images, "calibration", "reliability diagrams")

    out += _probe(m.get("probe"), m)
    out += _power(m)
    return "\n".join(out)


def _judge(spec: dict) -> str:
    what = spec.get("model") or spec.get("path") or "?"
    return f"`{what}` ({spec.get('backend', 'hf')})"


def _probe(p: dict | None, m: dict) -> list[str]:
    out = ["## Probe judge", ""]
    if p is None:
        return out + ["No probe configured (`probe:` in the study config): only the LLM judge.", ""]
    out += [f"The evaluation rounds rejudged by the probe `{p['judge']}`, beside the LLM judge on the same speeches.", ""]
    rows = [[k, fmt_ci(m["accuracy_by_format"][k]["binary"]) if k in m["accuracy_by_format"] else "–", fmt_ci(a["binary"])]
            for k, a in p["accuracy_by_format"].items()]
    out += table(["format", "LLM judge accuracy", "probe accuracy"], rows)
    rows = [[c, kind, fmt_ci(m["accuracy_by_checkpoint"][c][kind]["binary"]), fmt_ci(a[kind]["binary"])]
            for c, a in p["accuracy_by_checkpoint"].items() for kind in ("debate", "consultancy")]
    out += table(["checkpoint", "format", "LLM judge accuracy", "probe accuracy"], rows)
    return out


def _power(m: dict) -> list[str]:
    w = m["power"]
    n = w["questions_per_cell"]
    sig = w["checkpoints_with_significant_difference"]
    largest = w["largest_observed_difference"]
    text = (f"Each checkpoint-format cell rests on {n} questions (the independent unit; both side orders of a question "
            f"count once). At α = {w['alpha']} and power {w['power']}, with accuracy near p = {w['p']}, this run can "
            f"detect a judge accuracy that differs from chance by **{fmt(w['mde_vs_chance'])}** and a difference "
            f"between two cells (debate vs consultancy, one checkpoint vs another) of **{fmt(w['mde_between_cells'])}** "
            f"or more ({w['formula']}; the paired debate − consultancy test detects less when a question's outcomes in the "
            "two formats are positively correlated, a correlation a run this size cannot estimate). ")
    if largest is not None:
        text += f"The largest observed debate − consultancy difference is {fmt(largest)}; "
    text += ("no checkpoint's debate − consultancy interval excludes 0, so this run shows no difference either way; "
             "that is no evidence of no difference at effects below the MDE. " if not sig else
             f"the interval excludes 0 for {', '.join(sig)}; with several checkpoints tested, expect one such "
             "interval in twenty by chance. ")
    text += ("It can show that every stage ran and what the numbers would be computed from; it cannot show that "
             "training made the judge more accurate unless the accuracy gain exceeds the MDE, nor rank checkpoints "
             "whose rating intervals overlap.")
    return ["## What this run can and cannot show", "", text, ""]


# --------------------------------------------------------------------------- plots


def _plots(m: dict, out: Path) -> dict[str, str]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}

    def save(fig, key: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=110)
        plt.close(fig)
        images[key] = f"{key}.png"

    names = m["study"]["checkpoints"]
    per = m["accuracy_by_checkpoint"]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 3, 3.8))
    for k, kind in enumerate(("debate", "consultancy")):
        stats = [per[c][kind]["binary"] for c in names]
        xs = [i + 0.38 * k for i in range(len(names))]
        ax.bar(xs, [_nan0(s["mean"]) for s in stats], 0.38, yerr=list(zip(*[_err(s) for s in stats])), capsize=3, label=kind)
    if m["blind"]["rounds"]:
        ax.axhline(m["blind"]["binary"]["mean"], color="black", ls=":", lw=1, label="blind")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("judge accuracy (95% CI)")
    ax.legend(fontsize=8)
    save(fig, "accuracy_by_checkpoint")

    bt = m["bradley_terry"]
    if bt is not None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        rated = [c for c in names if c in bt["ratings"]]
        for kind, marker in (("debate", "o"), ("consultancy", "s")):
            xs = [bt["ratings"][c]["elo"] for c in rated]
            stats = [per[c][kind]["binary"] for c in rated]
            ax.errorbar(xs, [_nan0(s["mean"]) for s in stats], yerr=list(zip(*[_err(s) for s in stats])), fmt=marker,
                        capsize=3, label=kind)
        for c in rated:
            ax.annotate(c, (bt["ratings"][c]["elo"], _nan0(per[c]["debate"]["binary"]["mean"])), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlabel("debater Elo (Bradley–Terry)")
        ax.set_ylabel("judge accuracy (95% CI)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        save(fig, "accuracy_vs_rating")

    diffs = [(c, d["binary"]) for c, d in m["debate_minus_consultancy"].items() if d]
    if diffs:
        fig, ax = plt.subplots(figsize=(1.2 * len(diffs) + 3, 3.4))
        ax.errorbar(range(len(diffs)), [_nan0(d["difference"]) for _, d in diffs],
                    yerr=list(zip(*[_err({"mean": d["difference"], "ci": d["ci"]}) for _, d in diffs])), fmt="o", capsize=4)
        ax.axhline(0, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(diffs)), [c for c, _ in diffs])
        ax.set_ylabel("debate − consultancy accuracy")
        save(fig, "debate_minus_consultancy")

    cal = {k: c for k, c in m["calibration_by_format"].items() if c["bins"]}
    if cal:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        for k, c in cal.items():
            ax.plot([b["mean_p_a"] for b in c["bins"]], [b["frac_a_correct"] for b in c["bins"]], marker="o",
                    label=f"{k} (ECE {fmt(c['ece'])})")
        ax.set_xlabel("judge P(A)")
        ax.set_ylabel("share of rounds where A is correct")
        ax.legend(fontsize=7)
        save(fig, "calibration")
    return images


def _nan0(x: float | None) -> float:
    return 0.0 if x is None else x


def _err(stat: dict) -> tuple[float, float]:
    mean, (lo, hi) = stat["mean"], stat["ci"]
    if mean is None or lo is None or hi is None:
        return (0.0, 0.0)
    return (max(0.0, mean - lo), max(0.0, hi - mean))
