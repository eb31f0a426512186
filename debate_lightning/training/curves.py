"""``python -m debate_lightning curves RUN``: a training run's per-epoch metrics as a table (and a plot).

Online runs log their evaluations once per epoch (``tournament/win_rate`` of ``TournamentValidation``,
``judge/accuracy`` of ``JudgeEvaluation``, the rollout's ``objective/scores``, …) into the run's
``metrics.csv`` among the per-step rows. This reads them back as one row per epoch, the
callbacks' ``at_start`` evaluation (logged before any epoch) as ``start``:

    python -m debate_lightning curves outputs/grpo_tournament/grpo/version_0
    python -m debate_lightning curves RUN --metrics tournament/win_rate judge/accuracy --plot curve.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

DEFAULT_PREFIXES = ("tournament/", "judge/", "objective/scores", "rollout/judge_accuracy")


def metrics_file(run: str | Path) -> Path:
    """``run``'s metrics.csv (``run`` is the file or the ``version_N`` directory holding it)."""
    path = Path(run)
    path = path if path.suffix == ".csv" else path / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.csv at {path} (pass a run's version_N directory, "
                                f"e.g. outputs/grpo/grpo/version_0, or the CSV file itself)")
    return path


def epoch_curves(run: str | Path, metrics: list[str] | None = None) -> tuple[list[str], list[dict[str, float | str]]]:
    """(metric names, one row per epoch) from ``run``'s metrics.csv.

    A row holds ``epoch`` (``start`` for what was logged before the first epoch) and each metric's
    last value logged in that epoch (NaN where there is none). ``metrics`` default: every column
    whose name starts with one of ``DEFAULT_PREFIXES`` (but not the ``…/rounds`` counts and
    ``…/seconds`` timings); an unknown name is an error listing the columns there are.
    """
    path = metrics_file(run)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if metrics is None:
        metrics = [c for c in columns if c.startswith(DEFAULT_PREFIXES) and not c.endswith(("/rounds", "/seconds"))]
    else:
        unknown = [m for m in metrics if m not in columns]
        if unknown:
            raise ValueError(f"{path}: no column {', '.join(unknown)}; it has {', '.join(columns)}")
    by_epoch: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        values = {m: row[m] for m in metrics if row.get(m) not in (None, "")}
        if not values:
            continue
        epoch = row.get("epoch") or "start"
        try:
            by_epoch.setdefault(epoch, {}).update({m: float(v) for m, v in values.items()})
        except ValueError as err:
            raise ValueError(f"{path}, line {line}: {err}") from None
    order = sorted(by_epoch, key=lambda e: -1 if e == "start" else int(float(e)))
    table = [{"epoch": e if e == "start" else str(int(float(e))), **{m: by_epoch[e].get(m, math.nan) for m in metrics}}
             for e in order]
    return metrics, table


def format_table(metrics: list[str], table: list[dict[str, float | str]]) -> str:
    widths = [max(5, len("epoch"))] + [max(7, len(m)) for m in metrics]
    lines = ["  ".join(h.rjust(w) for h, w in zip(["epoch", *metrics], widths))]
    for row in table:
        cells = [str(row["epoch"]), *(f"{row[m]:.3f}" for m in metrics)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def plot_curves(metrics: list[str], table: list[dict[str, float | str]], out: str | Path) -> Path:
    """One panel per metric against the epoch (``start`` drawn at −1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [-1 if r["epoch"] == "start" else int(r["epoch"]) for r in table]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(6, 2.2 * len(metrics)), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        ax.plot(xs, [r[m] for r in table], marker="o")
        ax.set_ylabel(m, fontsize=8)
        if m == "tournament/win_rate":
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # the initial model's own level
    axes[-1, 0].set_xlabel("epoch (-1: before training)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def curves_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m debate_lightning curves", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run's version_N directory (or its metrics.csv)")
    parser.add_argument("--metrics", nargs="+", help="columns to show (default: tournament/*, judge/*, scores)")
    parser.add_argument("--plot", help="also write the curves to this PNG")
    args = parser.parse_args(argv)
    try:
        metrics, table = epoch_curves(args.run, args.metrics)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"curves: {err}\n")
    if not metrics or not table:
        parser.exit(2, f"curves: {metrics_file(args.run)} has no per-epoch evaluation metrics yet\n")
    print(format_table(metrics, table))
    if args.plot:
        print(f"wrote {plot_curves(metrics, table, args.plot)}")
    return 0
