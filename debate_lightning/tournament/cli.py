"""``tournament``, ``report``, ``merge`` and ``rejudge`` commands."""

from __future__ import annotations

import dataclasses
import json
import sys

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentError, ArgumentParser

from debate_lightning.config_files import resolve_config_args
from debate_lightning.tournament.config import TournamentConfig


def tournament_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m debate_lightning tournament",
        description="Play debate rounds and judge them; results go to OUTPUT/rounds.jsonl.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a tournament YAML: a file, or a shipped config by name (tournament.yaml)")
    parser.add_class_arguments(TournamentConfig, nested_key=None, as_group=False)
    # Switches: `--resume` alone means true; `--resume true|false` and `--no_resume` work too.
    switch = {"action": ActionYesNo, "nargs": "?"}
    parser.add_argument("--resume", **switch, default=False, help="continue a killed run in the same --output")
    parser.add_argument("--shard", type=str | None, default=None, help="i/n: play only shard i of n (0-based)")
    parser.add_argument("--progress", **switch, default=True, help="show a progress bar on stderr")
    parser.add_argument("--report", **switch, default=True, help="write report.md, plots and metrics.json at the end")
    return parser


def parse_tournament_args(argv: list[str]) -> tuple[TournamentConfig, dict]:
    """Parse ``--config FILE`` and flags into a checked ``TournamentConfig`` and run options.

    ``--config tournament.yaml`` that is no file here names the shipped config (said on stderr);
    a name that is neither raises ``ConfigNotFound`` (a FileNotFoundError) listing them."""
    parser = tournament_parser()
    ns = parser.parse_args(resolve_config_args(argv))
    init = parser.instantiate_classes(ns)
    fields = {f.name for f in dataclasses.fields(TournamentConfig)}
    cfg = TournamentConfig(**{k: init[k] for k in fields})
    return cfg, {"resume": ns.resume, "shard": ns.shard, "progress": ns.progress, "report": ns.report}


def tournament_main(argv: list[str] | None = None) -> int:
    from debate_lightning.tournament.runner import ResultsExist, parse_shard, run_tournament, summarize

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, opts = parse_tournament_args(argv)
        cfg.check()
        shard = parse_shard(opts["shard"])
        results = run_tournament(cfg, resume=opts["resume"], shard=shard, progress=opts["progress"])
    except (ArgumentError, ValueError, FileNotFoundError, ResultsExist, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(results)
    out = cfg.output
    print(json.dumps({k: v for k, v in summary.items() if k != "time"}, indent=2))
    print(
        f"judge accuracy: {summary['judge_accuracy']:.3f} over {summary['ok']} rounds "
        f"({summary['failed']} failed); results in {out}/rounds.jsonl"
    )
    if opts["report"] and summary["ok"]:
        from debate_lightning.tournament.report import write_report

        write_report(out)
        print(f"report: {out}/report.md")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """``report DIR``: metrics.json, PNG plots and report.md from a results directory."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m debate_lightning report", description=report_main.__doc__)
    ap.add_argument("directory", help="a tournament --output directory (holds rounds.jsonl)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs (metrics.json and report.md only)")
    args = ap.parse_args(argv)
    from debate_lightning.data.question import DataError
    from debate_lightning.tournament.report import write_report

    try:
        m = write_report(args.directory, n_boot=args.bootstrap, seed=args.seed, plots=not args.no_plots)
    except (FileNotFoundError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc = m["accuracy"]["overall"]["binary"]
    print(f"{m['rounds']['judged']} rounds, judge accuracy {acc['mean']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}]")
    print(f"wrote {args.directory}/report.md and metrics.json" + ("" if args.no_plots else " and PNG plots"))
    return 0


def merge_main(argv: list[str] | None = None) -> int:
    """``merge DIR... --output OUT``: combine the shards of one tournament."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m debate_lightning merge", description=merge_main.__doc__)
    ap.add_argument("inputs", nargs="+", help="results directories (one per shard)")
    ap.add_argument("--output", required=True, help="a new directory for the merged results")
    ap.add_argument("--force", action="store_true", help="merge even if the shards' configs differ")
    ap.add_argument("--report", action="store_true", help="also write the report of the merged results")
    args = ap.parse_args(argv)
    from debate_lightning.data.question import DataError
    from debate_lightning.tournament.merge import MergeConflict, merge_results

    try:
        summary = merge_results(args.inputs, args.output, force_config=args.force)
    except (MergeConflict, FileNotFoundError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if args.report:
        return report_main([args.output])
    return 0


def rejudge_main(argv: list[str] | None = None) -> int:
    """``rejudge SOURCE_DIR --output NEW_DIR --config judge.yaml``: re-score saved rounds with
    another judge (the config's ``models`` and ``judge``; other keys are ignored)."""
    from debate_lightning.data.question import DataError
    from debate_lightning.tournament.rejudge import rejudge
    from debate_lightning.tournament.runner import ResultsExist

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        helping = bool(argv) and argv[0] in ("-h", "--help")
        print("usage: python -m debate_lightning rejudge SOURCE_DIR --output NEW_DIR [--config FILE] "
              "[--judge.model KEY] [--models ...] [--resume]\n" + (rejudge_main.__doc__ or ""),
              file=sys.stdout if helping else sys.stderr)
        return 0 if helping else 2
    source, rest = argv[0], argv[1:]
    try:
        cfg, opts = parse_tournament_args(rest)
        summary = rejudge(source, cfg.output, cfg.models, cfg.judge, cfg.rounds_in_flight, opts["resume"], opts["progress"])
    except (ValueError, FileNotFoundError, ResultsExist, KeyError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if opts["report"]:
        return report_main([cfg.output])
    return 0
