"""``python -m debate_lightning study {plan,get,report}``: the Python half of
``scripts/debate_training.sh`` (the script runs the stages; these write their configs and the report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = """usage: python -m debate_lightning study plan OUTDIR [--size tiny|small|paper] [--config FILE]
       python -m debate_lightning study get OUTDIR KEY      (a key of OUTDIR/study.yaml, e.g. dpo_rounds)
       python -m debate_lightning study stages OUTDIR       (the stage names, in order)
       python -m debate_lightning study report OUTDIR       (report.md, metrics.json and PNGs in OUTDIR)"""


def study_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    action, rest = argv[0], argv[1:]
    handlers = {"plan": _plan, "get": _get, "stages": _stages, "report": _report}
    if action not in handlers:
        print(f"error: unknown study action {action!r}\n{USAGE}", file=sys.stderr)
        return 2
    from debate_lightning.study.plan import StudyConfigError

    try:
        return handlers[action](rest)
    except (StudyConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _plan(argv: list[str]) -> int:
    from debate_lightning.study.plan import SIZES, check_tournament_configs, load_study_config, write_plan

    ap = argparse.ArgumentParser(prog="python -m debate_lightning study plan",
                                 description="Write OUTDIR/study.yaml and every stage's config.")
    ap.add_argument("outdir")
    ap.add_argument("--size", default="tiny", help=f"one of {', '.join(SIZES)} (configs/study/<size>.yaml)")
    ap.add_argument("--config", default=None, help="a YAML merged over the size's config")
    args = ap.parse_args(argv)
    cfg, merged = load_study_config(args.size, args.config)
    written = write_plan(args.outdir, cfg, merged)
    check_tournament_configs(Path(args.outdir).resolve(), cfg)
    print(f"study planned in {args.outdir}: {len(written)} configs, stages {' '.join(_names(cfg))}", file=sys.stderr)
    return 0


def _names(cfg) -> list[str]:
    from debate_lightning.study.plan import stage_names

    return stage_names(cfg)


def _load(outdir: str):
    import yaml

    from debate_lightning.study.plan import STUDY_FILE, from_mapping

    path = Path(outdir) / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `study plan {outdir}` first")
    return from_mapping(yaml.safe_load(path.read_text()))


def _get(argv: list[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    cfg = _load(argv[0])
    if not hasattr(cfg, argv[1]):
        print(f"error: {argv[1]!r} is no key of the study config", file=sys.stderr)
        return 2
    value = getattr(cfg, argv[1])
    print("" if value is None else value)
    return 0


def _stages(argv: list[str]) -> int:
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    print(" ".join(_names(_load(argv[0]))))
    return 0


def _report(argv: list[str]) -> int:
    from debate_lightning.study.report import write_study_report

    ap = argparse.ArgumentParser(prog="python -m debate_lightning study report")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    cfg = _load(args.outdir)
    m = write_study_report(args.outdir, cfg)
    print(f"study report: {args.outdir}/report.md ({m['evaluation']['rounds']['judged']} judged evaluation rounds)")
    return 0
