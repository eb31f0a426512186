"""``python -m debate_lightning probe-table RUN_DIR [RUN_DIR ...]``: probes across formats, one table.

Do debate transcripts put more of the answer into a judge's activations than consultancy or blind
(``empty``) rounds, and does a probe trained on one format read another? Train one probe run per
format on one activation store (``fit --config configs/probe.yaml --data.init_args.formats
[debate]`` …; the whole sequence is in docs/probes.md), then::

    python -m debate_lightning probe-table outputs/probe_formats/train_* --output outputs/probe_formats/table.md

Rows are the runs, named by the formats they trained on (in the columns' order); columns are the
formats of the store.
A cell is the validation AUROC of the run's probe (the one its probe.json names best, or
``--probe NAME``) on the store's rows of that column's format whose stories **no** run trained on:
the same held-out rows in every row of the table, so cells compare down a column. The diagonal is
in-format validation, the rest is transfer. A last row gives the LLM judge's own AUROC (its A/B
log-probs) on those rows. Written as Markdown (stdout, and ``--output``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from debate_lightning.models.probe import LinearProbe
from debate_lightning.tournament.activations import ActivationStore
from debate_lightning.training.probe import evaluate

META_FILE = "probe.json"
# Columns in the order a reader expects; other formats follow alphabetically.
COLUMN_ORDER = ("debate", "debate_simultaneous", "consultancy", "consultancy0", "consultancy1", "double_consultancy",
                "open_debate", "empty")


def probe_dir(path: str | Path) -> Path:
    """The directory holding ``probe.json``: ``path`` itself, or the newest one below it (a fit's
    ``default_root_dir`` holds ``<logger>/version_N/probe.json``)."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such probe run directory")
    found = sorted(path.rglob(META_FILE), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{path}: no {META_FILE} in it or below (`fit --config configs/probe.yaml` writes "
                                "one beside its logs at the end of fit)")
    return found[-1].parent


def _column_key(name: str) -> tuple[int, str]:
    return (COLUMN_ORDER.index(name) if name in COLUMN_ORDER else len(COLUMN_ORDER), name)


def _train_stories(probe: LinearProbe, where: Path) -> set[str]:
    data = probe.meta.get("data") or {}
    if "train_story_ids" not in data:
        raise ValueError(f"{where / META_FILE} records no train stories (data.train_story_ids): it was written by an "
                         "older version; retrain the probe to compare it on held-out stories")
    return {str(s) for s in data["train_story_ids"]}


def _check(probe: LinearProbe, store: ActivationStore, where: Path) -> list[int]:
    """Refuse a store the probe cannot read; the store's layer positions of the probe's layers."""
    header = store.header
    try:
        probe.check_model(header.get("model"), int(header["hidden_size"]), int(header["num_layers"]),
                          header.get("adapter"))
        probe.check_prompt_sets(header.get("prompt_sets", []), where=f"activation store {store.path}")
    except ValueError as e:
        raise ValueError(f"activation store {store.path} cannot be read by the probe of {where}: {e}") from None
    missing = [layer for layer in probe.layers if layer not in store.layers]
    if missing:
        raise ValueError(f"probe {probe.name!r} of {where} reads layers {probe.layers}; activation store {store.path} "
                         f"holds {store.layers} ({missing} missing)")
    return [store.layers.index(layer) for layer in probe.layers]


def _metrics(p_a: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    return {**evaluate(p_a, labels), "n": int(labels.numel())}


def build_table(runs: list[str | Path], activations: str | Path | None = None, by: str = "kind",
                probe: str | None = None) -> dict[str, Any]:
    """The table as a dict: ``columns``, one entry per run in ``rows`` (its ``cells`` by column),
    ``llm_judge`` (cells), and what was held out. ``by``: ``kind`` (both consultancy sides are one
    column) or ``name`` (``consultancy0`` and ``consultancy1`` apart)."""
    if by not in ("kind", "name"):
        raise ValueError(f"by must be 'kind' or 'name', got {by!r}")
    if not runs:
        raise ValueError("give at least one probe run directory")
    field = "format" if by == "kind" else "format_name"
    dirs = [probe_dir(r) for r in runs]
    probes = [LinearProbe.load(d, probe) for d in dirs]
    seen: set[str] = set()
    for d, p in zip(dirs, probes):
        seen |= _train_stories(p, d)
    if activations is None:
        stores = {str(Path((p.meta.get("data") or {}).get("store") or "?")) for p in probes}
        if len(stores) != 1:
            raise ValueError(f"the runs trained on different activation stores ({sorted(stores)}): give --activations "
                             "STORE, the store every probe is compared on")
        activations = stores.pop()
    store = ActivationStore(activations)
    x, rows = store.load()
    held = [i for i, r in enumerate(rows) if str(r["story_id"]) not in seen]
    if not held:
        raise ValueError(f"activation store {store.path}: every one of its {len({r['story_id'] for r in rows})} stories "
                         "was trained on by some run, so nothing is held out; train the runs with the same data.seed "
                         "and data.val_fraction, or give --activations a store of other stories")
    columns = sorted({str(rows[i][field]) for i in held}, key=_column_key)
    at = {c: [i for i in held if str(rows[i][field]) == c] for c in columns}
    labels = torch.tensor([float(r["label"]) for r in rows])
    kind_of = {str(r["format_name"]): str(r["format"]) for r in rows}

    table_rows = []
    for d, p in zip(dirs, probes):
        p_a = p.p_a(x[:, _check(p, store, d)])
        trained = (p.meta.get("data") or {}).get("train_formats") or ["?"]
        names = sorted({kind_of.get(t, t) if by == "kind" else t for t in trained}, key=_column_key)
        table_rows.append({"run": str(d), "probe": p.name, "layers": p.layers, "train_formats": names,
                           "cells": {c: _metrics(p_a[at[c]], labels[at[c]]) for c in columns}})
    # rows in the columns' order, so in-format cells fall on the diagonal
    table_rows.sort(key=lambda row: [_column_key(f) for f in row["train_formats"]])
    judge = {}
    for c in columns:
        with_p = [i for i in at[c] if rows[i].get("judge_p_a") is not None]
        judge[c] = _metrics(torch.tensor([float(rows[i]["judge_p_a"]) for i in with_p]), labels[with_p])
    return {"store": str(store.path), "model": store.header.get("model"), "by": by, "columns": columns,
            "rows": table_rows, "llm_judge": judge,
            "held_out": {"rows": len(held), "stories": len({rows[i]["story_id"] for i in held}),
                         "rows_by_column": {c: len(at[c]) for c in columns}}}


def _cell(m: dict[str, Any]) -> str:
    return "–" if m.get("auroc") is None else f"{m['auroc']:.3f}"


def render_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    labels = [", ".join(r["train_formats"]) for r in table["rows"]]
    repeated = {x for x in labels if labels.count(x) > 1}
    lines = [
        "# Probe AUROC across formats", "",
        f"Activation store `{table['store']}` (model `{table['model']}`). Rows: the format a probe was trained on; "
        "columns: the format it is validated on. Cells: AUROC of P(answer A is correct) on rows of stories no run "
        f"trained on ({table['held_out']['rows']} rows from {table['held_out']['stories']} stories), the same rows "
        "in every row of the table.", "",
        "| trained on \\ validated on | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for label, row in zip(labels, table["rows"]):
        name = f"{label} (`{row['run']}`)" if label in repeated else label
        lines.append(f"| {name}, probe {row['probe']} | " + " | ".join(_cell(row["cells"][c]) for c in cols) + " |")
    lines.append("| LLM judge (A/B log-probs) | " + " | ".join(_cell(table["llm_judge"][c]) for c in cols) + " |")
    lines.append("| held-out rows | " + " | ".join(str(table["held_out"]["rows_by_column"][c]) for c in cols) + " |")
    lines += [
        "", "How to read it: 0.5 is chance, 1 a perfect ranking. Down a column, probes trained on different formats "
        "are compared on the same rows; along a row, off the diagonal, a probe reads formats it never saw. "
        "Each run's probe is the one it named best by its own validation AUROC, which flatters its diagonal cell "
        "a little; `--probe concat` (or a layer) compares one fixed probe everywhere. With a few dozen held-out "
        "rows per column, differences under ~0.1 are noise.", "",
    ]
    return "\n".join(lines)


def probe_table_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m debate_lightning probe-table",
        description="One table of probe AUROC: rows the format each probe run trained on, columns the format it is "
                    "validated on, on stories no run trained on; plus the LLM judge's AUROC.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR",
                    help="probe runs: directories holding probe.json, or a fit's default_root_dir (newest one below)")
    ap.add_argument("--activations", default=None, metavar="STORE",
                    help="the activation store to validate on (default: the one the runs trained on)")
    ap.add_argument("--by", choices=("kind", "name"), default="kind",
                    help="columns by format kind (consultancy) or name (consultancy0, consultancy1)")
    ap.add_argument("--probe", default=None, metavar="NAME",
                    help="which probe of each run: a layer such as -1, or concat (default: each run's best)")
    ap.add_argument("--output", default=None, metavar="FILE.md", help="also write the table here, and FILE.json")
    return ap


def probe_table_main(argv: list[str] | None = None) -> int:
    args = probe_table_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        table = build_table(args.runs, args.activations, args.by, args.probe)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = render_markdown(table)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0
