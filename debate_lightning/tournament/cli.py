"""``tournament``, ``report``, ``merge`` and ``rejudge`` commands."""

from __future__ import annotations

import dataclasses
import json
import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from debate_lightning.tournament.config import TournamentConfig


def tournament_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m debate_lightning tournament",
        description="Play debate rounds and judge them; results go to OUTPUT/rounds.jsonl.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a tournament YAML (see configs/)")
    parser.add_class_arguments(TournamentConfig, nested_key=None, as_group=False)
    parser.add_argument("--resume", type=bool, default=False, help="continue a killed run in the same --output")
    parser.add_argument("--shard", type=str | None, default=None, help="i/n: play only shard i of n (0-based)")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar on stderr")
    return parser


def parse_tournament_args(argv: list[str]) -> tuple[TournamentConfig, dict]:
    """Parse ``--config FILE`` and flags into a checked ``TournamentConfig`` and run options."""
    parser = tournament_parser()
    ns = parser.parse_args(argv)
    init = parser.instantiate_classes(ns)
    fields = {f.name for f in dataclasses.fields(TournamentConfig)}
    cfg = TournamentConfig(**{k: init[k] for k in fields})
    return cfg, {"resume": ns.resume, "shard": ns.shard, "progress": ns.progress}


def tournament_main(argv: list[str] | None = None) -> int:
    from debate_lightning.tournament.runner import ResultsExist, parse_shard, run_tournament, summarize

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, opts = parse_tournament_args(argv)
        cfg.check()
        shard = parse_shard(opts["shard"])
        results = run_tournament(cfg, resume=opts["resume"], shard=shard, progress=opts["progress"])
    except (ValueError, FileNotFoundError, ResultsExist, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(results)
    out = cfg.output
    print(json.dumps({k: v for k, v in summary.items() if k != "time"}, indent=2))
    print(
        f"judge accuracy: {summary['judge_accuracy']:.3f} over {summary['ok']} rounds "
        f"({summary['failed']} failed); results in {out}/rounds.jsonl"
    )
    return 0
