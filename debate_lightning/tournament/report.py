"""``report DIR``: metrics.json (every number), PNG plots (matplotlib, headless) and report.md."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.open_debate import choice_stats
from debate_lightning.debate.replay import REFUSED, human_judge_accuracy
from debate_lightning.tournament.metrics import DEFAULT_BOOTSTRAP, compute_metrics
from debate_lightning.tournament.results import ResultsFile

PLOTS = ("accuracy", "calibration", "bradley_terry", "win_matrix", "sides", "quotes", "formats")


def write_report(directory: str | Path, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, plots: bool = True) -> dict:
    """Compute the metrics of ``directory``'s rounds and write metrics.json, plots and report.md."""
    directory = Path(directory)
    results = ResultsFile(directory)
    if not results.path.is_file():
        raise FileNotFoundError(f"no results in {directory} (expected {results.path})")
    rounds = list(results.latest())
    by_judge, source = judges_of(directory)
    metrics = compute_metrics(rounds, n_boot=n_boot, seed=seed, by_judge=by_judge)
    if metrics["judge_comparison"] is not None:
        metrics["judge_comparison"]["rejudge_source"] = source
    metrics["human_judges"] = human_judges(directory, rounds)
    metrics["open_debate"] = choice_stats(rounds)
    (directory / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False) + "\n")
    images = _plots(metrics, directory) if plots else {}
    (directory / "report.md").write_text(_markdown(metrics, images, directory))
    return metrics


def judges_of(directory: Path) -> tuple[dict[str, list[RoundResult]], str | None]:
    """Every judge's latest verdict per round in ``directory``'s rounds.jsonl (a run and its
    ``rejudge`` combined hold two per round), plus, for a ``rejudge`` output, the rounds of the
    source run's judge(s) (``rejudge.json``'s ``source``; returned when found), so a probe judge
    and the LLM judge of the same speeches are compared by round id."""
    by_judge: dict[str, dict[str, RoundResult]] = {}
    for r in ResultsFile(directory).results():
        by_judge.setdefault(r.judge, {})[r.round_id] = r
    source = None
    info = directory / "rejudge.json"
    if info.is_file():
        src = Path(json.loads(info.read_text()).get("source") or "")
        # rejudge records the source as given on its command line: relative to where it ran.
        for candidate in (src, directory.parent / src.name):
            if src.name and ResultsFile(candidate).exists() and candidate.resolve() != directory.resolve():
                source, here = str(candidate), set(by_judge)
                for r in ResultsFile(candidate).results():
                    if r.judge not in here:  # a judge of this directory's own keeps its own verdicts
                        by_judge.setdefault(r.judge, {})[r.round_id] = r
                break
    return {name: list(rounds.values()) for name, rounds in by_judge.items()}, source


def human_judges(directory: Path, rounds: list[RoundResult]) -> dict | None:
    """For a run whose debaters replay human debates (backend ``human_replay``): the human judges'
    accuracy recorded in that file on the questions the model judge judged, and the rounds the
    data could not fill (refused, never made up). None for any other run."""
    saved = directory / "config.yaml"
    config = (yaml.safe_load(saved.read_text()) or {}) if saved.is_file() else {}
    paths = sorted({m.get("path") for m in (config.get("models") or {}).values()
                    if isinstance(m, dict) and m.get("backend") == "human_replay"})
    if not paths:
        return None
    refused = [r for r in rounds if not r.ok and REFUSED in (r.error or "")]
    out: dict[str, Any] = {"files": paths, "refused": len(refused), "refused_rounds": [
        {"round_id": r.round_id, "question_id": r.question.get("question_id"), "error": r.error} for r in refused]}
    judged_ids = [r.question["question_id"] for r in rounds if r.ok and r.p_a is not None]
    try:
        out["humans"] = human_judge_accuracy(paths[0], judged_ids)
    except (OSError, ValueError) as e:  # the file moved since the run: say so, keep the rest
        out["humans"] = None
        out["humans_error"] = str(e)
    return out


def _clean(x: Any) -> Any:
    """NaN/inf become null so metrics.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# --------------------------------------------------------------------------- markdown


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{_f(m['mean'])} [{_f(lo)}, {_f(hi)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(m: dict, images: dict[str, str], directory: Path) -> str:
    n = m["rounds"]
    out = [
        f"# Tournament report: {directory.name}",
        "",
        f"{n['judged']} judged rounds ({n['failed']} failed, {n['no_verdict']} without a verdict); "
        f"judge: {', '.join(m['judges']) or '–'}. Intervals are 95% bootstrap intervals over questions "
        f"({m['bootstrap']['replicates']} replicates): both side orders of a question are resampled together.",
        "",
        "## Judge accuracy",
        "",
        "Binary: the verdict names the correct answer. Probabilistic: the judge's mean probability for the correct answer.",
        "",
    ]
    acc, auc = m["accuracy"], m["auroc"]
    rows = [["**all**", str(acc["overall"]["rounds"]), _ci(acc["overall"]["binary"]), _ci(acc["overall"]["prob"]),
             _f(auc["overall"]["auroc"])]]
    for name, a in acc["by_format"].items():
        rows.append([name, str(a["rounds"]), _ci(a["binary"]), _ci(a["prob"]), _f(auc["by_format"][name]["auroc"])])
    out += [_table(["format", "rounds", "binary accuracy", "probabilistic accuracy", "AUROC"], rows), "",
            "AUROC: of P(A) against 'A is correct' (torchmetrics `BinaryAUROC`): how well the judge's probabilities "
            "rank the rounds, whatever their calibration; 0.5 is chance, – where every round had the same answer.", ""]
    if len(acc["by_matchup"]) > 1:
        rows = [[k, str(a["rounds"]), _ci(a["binary"]), _ci(a["prob"])] for k, a in acc["by_matchup"].items()]
        out += ["Per matchup:", "", _table(["format: matchup", "rounds", "binary", "probabilistic"], rows), ""]
    out += _image(images, "accuracy")
    out += _human(m.get("human_judges"), acc["overall"])
    out += _open_debate(m.get("open_debate"))

    if m["format_comparisons"]:
        out += ["## Debate vs consultancy", "",
                "Accuracies on the same questions; the difference's interval is a paired bootstrap (questions drawn once for both).", ""]
        rows = []
        for c in m["format_comparisons"]:
            for kind in ("binary", "prob"):
                d = c[kind]
                rows.append([f"{c['a']} − {c['b']}", kind, _f(d[c["a"]]), _f(d[c["b"]]), _f(d["difference"]),
                             f"[{_f(d['ci'][0])}, {_f(d['ci'][1])}]", _f(d["p_two_sided"])])
        out += [_table(["comparison", "accuracy", "first", "second", "difference", "95% CI", "bootstrap p"], rows), ""]
        out += _image(images, "formats")

    cal = m["calibration"]
    out += ["## Calibration", "",
            f"ECE (torchmetrics `BinaryCalibrationError`, {cal.get('n_bins', 10)} bins, L1) of P(A) against 'A is correct': "
            f"**{_f(cal['ece'])}**; of the judge's confidence in its verdict: {_f(cal['ece_top_label'])}.", ""]
    rows = [[name, str(c["rounds"]), _f(c["ece"]), _f(c["ece_top_label"])] for name, c in m["calibration_by_format"].items()]
    if rows:
        out += [_table(["format", "rounds", "ECE P(A)", "ECE top-label"], rows), ""]
    out += _image(images, "calibration")

    out += _comparison(m.get("judge_comparison"), m["judges"])

    bt = m["bradley_terry"]
    out += ["## Debater ratings (Bradley–Terry)", ""]
    if bt is None:
        out += ["No rounds between two different debaters: ratings need a round robin or custom matchups.", ""]
    else:
        out += [f"Penalised MLE (L2 = {bt['l2']}) on {bt['games']} games; Elo = 1000 + 400·θ/ln 10. Ranking: "
                f"{' > '.join(bt['ranking'])}.", ""]
        rows = [[n, str(r["wins"]), str(r["losses"]), _f(r["theta"]), f"[{_f(r['theta_ci'][0])}, {_f(r['theta_ci'][1])}]",
                 _f(r["elo"], 0)] for n, r in sorted(bt["ratings"].items(), key=lambda kv: -kv[1]["theta"])]
        out += [_table(["debater", "wins", "losses", "θ", "95% CI", "Elo"], rows), ""]
        out += _image(images, "bradley_terry") + _image(images, "win_matrix")

    out += ["## Win rates by side", ""]
    rows = []
    for fmt, e in m["sides"].items():
        if "first_speaker" in e:
            rows.append([fmt, "position A (first speaker)", _ci(e["first_speaker"]), str(e["first_speaker"]["n"])])
            rows.append([fmt, "correct side", _ci(e["correct_side"]), str(e["correct_side"]["n"])])
        else:
            for key, label in (("consultant_correct_side", "consultant, correct"), ("consultant_incorrect_side", "consultant, incorrect")):
                rows.append([fmt, label, _ci(e[key]), str(e[key]["n"])])
    if rows:
        out += [_table(["format", "side", "win rate", "rounds"], rows), ""]
    per = [(fmt, name, d) for fmt, e in m["sides"].items() for name, d in e.get("by_debater", {}).items()]
    if per:
        rows = [[fmt, name] + [(_ci(d[k]) if k in d else "–") for k in ("all", "correct", "incorrect", "first", "second")]
                for fmt, name, d in per]
        out += ["Per debater:", "", _table(["format", "debater", "all", "correct side", "incorrect side", "first", "second"], rows), ""]
    out += _image(images, "sides")

    t = m["side_order_test"]
    out += ["## Paired test across side orders", ""]
    if t.get("pairs"):
        d = t["prob_difference_a_minus_b"]
        out += [
            f"{t['pairs']} pairs (same question, format, debaters and repeat; correct answer at A vs at B). "
            f"Judge right in both: {t['both_correct']}, in neither: {t['both_wrong']}, only when the correct answer was A: "
            f"{t['correct_only_when_a']}, only when B: {t['correct_only_when_b']}. "
            f"McNemar exact test (binomial on discordant pairs): p = {_f(t['mcnemar_exact_p'])}. "
            f"Same answer picked in both orders: {_f(t['consistent'])}. "
            f"Probabilistic accuracy, A-order minus B-order: {_ci(d)}.",
            "",
        ]
        per = {k: v for k, v in m["side_order_test_by_format"].items() if v.get("pairs")}
        if len(per) > 1:
            rows = [[k, str(v["pairs"]), str(v["both_correct"]), str(v["both_wrong"]), str(v["correct_only_when_a"]),
                     str(v["correct_only_when_b"]), _f(v["mcnemar_exact_p"]), _f(v["consistent"])] for k, v in per.items()]
            out += [_table(["format", "pairs", "both right", "both wrong", "right only at A", "right only at B",
                            "McNemar p", "same answer"], rows), ""]
    else:
        out += ["No question was played in both side orders (set `data.both_orders: true`).", ""]

    out += ["## Quotes", "", "Per speech; share valid pools the quotes of the group's speeches.", ""]
    rows = [[g, str(q["speeches"]), _f(q["quotes_per_speech"], 2), _f(q["share_valid"]), _f(q["valid_words_per_speech"], 1),
             _f(q["speeches_with_quotes"])] for g, q in m["quotes"].items()]
    out += [_table(["speeches of", "n", "quotes/speech", "share valid", "valid words/speech", "share quoting"], rows), ""]
    out += _image(images, "quotes")
    out += ["Every number above is in `metrics.json`.", ""]
    return "\n".join(out)


def _comparison(c: dict | None, reported: list[str]) -> list[str]:
    """Judges side by side (a probe judge and the LLM judge of the same speeches)."""
    if not c:
        return []
    kind = {True: "probe", False: "LLM"}
    source = f" (the rounds of judges not in this directory come from the rejudged run {c['rejudge_source']})" \
        if c.get("rejudge_source") else ""
    out = ["## Judges side by side", "",
           f"The same {c['common_rounds']} rounds, matched by round id, judged by each judge{source}. Agreement: "
           "the share of the rounds both judged where both picked the same answer. The other sections report one "
           f"verdict per round (its last line in rounds.jsonl; judge {', '.join(f'`{j}`' for j in reported) or '–'}).", ""]
    rows = [[f"`{name}`", kind[t["probe"]], str(t["rounds"]), _f(t["binary_accuracy"]), _f(t["prob_accuracy"]),
             _f(t["auroc"]), _f(t["ece"])] for name, t in c["table"].items()]
    out += [_table(["judge", "kind", "rounds", "binary accuracy", "probabilistic accuracy", "AUROC", "ECE"], rows), ""]
    rows = [[f"`{a['a']}`", f"`{a['b']}`", str(a["rounds"]), _f(a["agreement"])] for a in c["agreement"]]
    out += [_table(["judge", "judge", "rounds judged by both", "agreement"], rows), ""]
    return out


def _human(h: dict | None, model: dict) -> list[str]:
    """The model judge next to the human judges of the same replayed human debates."""
    if not h:
        return []
    out = ["## Model judge vs human judges", "",
           f"Both sides replayed the human debaters' recorded speeches ({', '.join(f'`{p}`' for p in h['files'])}).", ""]
    hu = h.get("humans")
    if hu is None:
        out += [f"Human judges' accuracy unavailable: {h.get('humans_error')}", ""]
    else:
        rows = [["model judge", f"{model['rounds']} rounds", _ci(model["binary"]), _ci(model["prob"])],
                ["human judges (recorded)", f"{hu['sessions']} sessions of {hu['questions']} questions",
                 _f(hu["binary"]), _f(hu["prob"])]]
        out += [_table(["judge", "on", "binary accuracy", "probabilistic accuracy"], rows), ""]
    out += [f"Rounds refused because the data holds no speech for them (none is made up): **{h['refused']}**.", ""]
    out += [f"- `{r['round_id']}`: {r['error']}" for r in h["refused_rounds"][:10]]
    if h["refused"] > 10:
        out += [f"- … and {h['refused'] - 10} more (all in `metrics.json`)"]
    return out + ([""] if h["refused"] else [])


def _open_debate(c: dict | None) -> list[str]:
    """Open debate: how often a debater's own choice of answer was the correct one."""
    if not c:
        return []
    out = ["## Open debate: chosen sides", "",
           f"In {c['rounds']} open-debate rounds each debater first named the answer it would defend. Correct side: "
           "the share of those statements naming the correct answer (a statement naming none counts as wrong; "
           "'of choices' leaves those out). 0.5 is chance.", ""]
    rows = [["**all**", str(c["statements"]), str(c["correct"]), str(c["no_choice"]), _f(c["share"]),
             _f(c["share_of_choices"])]]
    rows += [[f"`{name}`", str(t["statements"]), str(t["correct"]), str(t["no_choice"]), _f(t["share"]),
              _f(t["share_of_choices"])] for name, t in c["by_debater"].items()]
    out += [_table(["debater", "statements", "correct side", "no choice", "correct-side share", "of choices"], rows), "",
            f"Both debaters chose the same answer in {c['both_same']} of {c['rounds']} rounds "
            f"({c['both_same_correct']} of them the correct one); such rounds were played with both arguing for it.", ""]
    return out


def _image(images: dict[str, str], key: str) -> list[str]:
    return [f"![{key}]({images[key]})", ""] if key in images else []


# --------------------------------------------------------------------------- plots


def _plots(m: dict, directory: Path) -> dict[str, str]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}

    def save(fig, key: str) -> None:
        name = f"{key}.png"
        fig.tight_layout()
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        images[key] = name

    acc = m["accuracy"]
    groups = [("all", acc["overall"])] + list(acc["by_format"].items())
    if acc["overall"]["rounds"]:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(groups) + 1.5))
        _hbars(ax, [g for g, _ in groups], {"binary": [a["binary"] for _, a in groups], "probabilistic": [a["prob"] for _, a in groups]})
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("judge accuracy (95% bootstrap CI)")
        ax.set_title("Judge accuracy by format")
        save(fig, "accuracy")

    if m["format_comparisons"]:
        comps = m["format_comparisons"]
        fig, axes = plt.subplots(1, len(comps), figsize=(5 * len(comps), 3.6), squeeze=False)
        for ax, c in zip(axes[0], comps):
            kinds = ("binary", "prob")
            x = range(len(kinds))
            for k, fam in enumerate((c["a"], c["b"])):
                means = [acc["by_family"][fam][kind]["mean"] for kind in kinds]
                errs = [_err(acc["by_family"][fam][kind]) for kind in kinds]
                ax.bar([i + 0.38 * k for i in x], means, 0.38, yerr=list(zip(*errs)), capsize=4, label=fam)
            ax.set_xticks([i + 0.19 for i in x], [f"{kind}\nΔ = {c[kind]['difference']:+.3f} "
                                                   f"[{c[kind]['ci'][0]:+.3f}, {c[kind]['ci'][1]:+.3f}]" for kind in kinds])
            ax.axhline(0.5, color="grey", ls="--", lw=1)
            ax.set_ylim(0, 1)
            ax.set_ylabel("judge accuracy")
            ax.set_title(f"{c['a']} vs {c['b']} ({c['questions']} shared questions)")
            ax.legend(loc="lower right")
        save(fig, "formats")

    cal = m["calibration"]
    if cal["rounds"]:
        fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.6, 7.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
        curves = [("all", cal)] + (list(m["calibration_by_format"].items()) if len(m["calibration_by_format"]) > 1 else [])
        for name, c in curves:
            xs = [b["mean_p_a"] for b in c["bins"]]
            ys = [b["frac_a_correct"] for b in c["bins"]]
            sizes = [20 + 200 * b["count"] / c["rounds"] for b in c["bins"]]
            ax.plot(xs, ys, marker="o", lw=2 if name == "all" else 1, alpha=1 if name == "all" else 0.6, label=f"{name} (ECE {c['ece']:.3f})")
            if name == "all":
                ax.scatter(xs, ys, s=sizes, alpha=0.3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of rounds where A is correct")
        ax.set_title("Reliability diagram (marker area ∝ rounds)")
        ax.legend(fontsize=8, loc="upper left")
        # Where the probabilities lie: a judge near 0.5 everywhere is calibrated but uninformative.
        hist.hist(m["p_a_values"], bins=20, range=(0, 1), color="tab:blue", alpha=0.7, edgecolor="white")
        hist.set_xlabel("judge P(A)")
        hist.set_ylabel("rounds")
        save(fig, "calibration")

    bt = m["bradley_terry"]
    if bt is not None:
        names = sorted(bt["ratings"], key=lambda n: bt["ratings"][n]["theta"])
        fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
        elo = [bt["ratings"][n]["elo"] for n in names]
        lo = [bt["ratings"][n]["elo"] - _nan0(bt["ratings"][n]["elo_ci"][0], bt["ratings"][n]["elo"]) for n in names]
        hi = [_nan0(bt["ratings"][n]["elo_ci"][1], bt["ratings"][n]["elo"]) - bt["ratings"][n]["elo"] for n in names]
        ax.errorbar(elo, range(len(names)), xerr=[lo, hi], fmt="o", capsize=4)
        ax.set_yticks(range(len(names)), names)
        ax.axvline(1000, color="grey", ls="--", lw=1)
        ax.set_xlabel("Bradley–Terry rating (Elo scale, 95% bootstrap CI)")
        ax.set_title("Debater ratings")
        save(fig, "bradley_terry")

        order = bt["ranking"]
        mat = [[bt["predicted_win"][a][b] if a != b else math.nan for b in order] for a in order]
        fig, ax = plt.subplots(figsize=(1.1 * len(order) + 2.5, 1.0 * len(order) + 1.8))
        im = ax.imshow(mat, cmap="RdBu", vmin=0, vmax=1)
        for i, a in enumerate(order):
            for j, b in enumerate(order):
                if a != b:
                    n = bt["win_counts"][a][b] + bt["win_counts"][b][a]
                    ax.text(j, i, f"{mat[i][j]:.2f}\n({bt['win_counts'][a][b]}/{n})", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_yticks(range(len(order)), order)
        ax.set_xlabel("opponent")
        ax.set_ylabel("debater")
        ax.set_title("Predicted P(row beats column)\n(observed wins/games)")
        fig.colorbar(im, ax=ax, fraction=0.046)
        save(fig, "win_matrix")

    rows = []
    for fmt, e in m["sides"].items():
        if "first_speaker" in e:
            rows += [(f"{fmt}: position A / first", e["first_speaker"]), (f"{fmt}: correct side", e["correct_side"])]
        else:
            rows += [(f"{fmt}: consultant, correct", e["consultant_correct_side"]),
                     (f"{fmt}: consultant, incorrect", e["consultant_incorrect_side"])]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
        _hbars(ax, [r for r, _ in rows], {"win rate": [v for _, v in rows]})
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of rounds the judge sided with this side (95% CI)")
        ax.set_title("Win rates by side")
        ax.get_legend().remove()
        save(fig, "sides")

    q = m["quotes"]
    if q["all"]["speeches"]:
        groups_q = ["winner", "loser", "correct_side", "incorrect_side"]
        stats = [("quotes_per_speech", "quotes / speech"), ("share_valid", "share of quotes valid"),
                 ("valid_words_per_speech", "valid quoted words / speech")]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        for ax, (key, label) in zip(axes, stats):
            vals = [_nan0(q[g][key], 0.0) for g in groups_q]
            bars = ax.bar(range(4), vals, color=["tab:green", "tab:red", "tab:blue", "tab:orange"])
            for bar, g in zip(bars, groups_q):
                shown = q[g][key]
                text = "n/a" if shown is None or not math.isfinite(shown) else f"{shown:.2f}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(4), ["winner", "loser", "correct", "incorrect"])
            ax.set_ylim(0, max(1.0, max(vals) * 1.15) if key != "share_valid" else 1.05)
            ax.set_title(label)
        title = "Quotes per speech, by outcome and by side"
        if not q["all"]["quotes_per_speech"]:
            title += f" (none of the {q['all']['speeches']} speeches quoted the story)"
        fig.suptitle(title)
        save(fig, "quotes")
    return images


def _nan0(x, default):
    return default if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _err(stat: dict) -> tuple[float, float]:
    lo, hi = stat["ci"]
    mean = stat["mean"]
    return (max(0.0, mean - _nan0(lo, mean)), max(0.0, _nan0(hi, mean) - mean))


def _hbars(ax, labels: list[str], series: dict[str, list[dict]]) -> None:
    k = len(series)
    height = 0.8 / k
    for s, (name, stats) in enumerate(series.items()):
        ys = [i + (s - (k - 1) / 2) * height for i in range(len(labels))]
        ax.barh(ys, [_nan0(st["mean"], 0.0) for st in stats], height, xerr=list(zip(*[_err(st) for st in stats])),
                capsize=3, label=name)
        for y, st in zip(ys, stats):  # the value and its sample size, so an empty bar still reads
            ax.annotate(f"{_f(st['mean'], 2)} (n={st['n']})", (0.01, y), va="center", fontsize=7, color="white"
                        if _nan0(st["mean"], 0.0) > 0.15 else "black")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
