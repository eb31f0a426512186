"""One entry point over every question source, and the ``data`` command that shows its output.

Configs name a source and its options; ``load_questions`` turns that into the exact list of
Questions a tournament or DataModule will use, and ``python -m debate_lightning data …`` prints
the same list, so a user can see what a config will debate before paying for a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from debate_lightning.data.question import SPLITS, Question, first_questions, with_both_orders
from debate_lightning.data.runs import run_questions, used_question_ids

log = logging.getLogger(__name__)
SOURCES = ("synthetic", "quality", "human_debates", "run", "jsonl")
DEFAULT_NUM_STORIES = 25
# The keyword options each source accepts beyond the common arguments.
SOURCE_OPTIONS = {
    "synthetic": ("num_stories", "questions_per_story"),
    "quality": ("difficult_only", "exclude_titles", "file_split"),
    "human_debates": (),
    "run": (),
    "jsonl": (),
}


def load_questions(
    source: str,
    path: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    both_orders: bool = False,
    exclude_runs: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> list[Question]:
    """Questions from ``source``, filtered to ``split``, cut to ``limit``, optionally both orders.

    ``limit`` counts questions before ``both_orders`` doubles them, so ``limit=50,
    both_orders=True`` debates 50 questions in 100 rounds. ``seed`` drives the synthetic generator
    and the side order of QuALITY questions. Source options:

    * synthetic: ``num_stories`` (default: enough for ``limit``, else 25), ``questions_per_story`` (4)
    * quality: ``difficult_only`` (True), ``exclude_titles`` (titles or a debates-readable.jsonl
      path), ``file_split`` (train/dev/test; default from the file name)
    * human_debates: none
    * run: ``path`` is an earlier tournament's ``--output`` directory (or its ``rounds.jsonl``);
      its questions and side orders, each once, in the order they were first debated. ``limit``
      counts questions (a question in both orders is one), and ``both_orders`` adds only the
      twins the run lacks, so a run played in both orders replays exactly.
    * jsonl: ``path`` is a file in the documented ``Question`` fields (see ``data/jsonl.py``)

    ``exclude_runs`` (run directories) drops every question any of them debated, in both side
    orders, before ``limit`` counts, so ``limit: 50`` still gives 50 questions, all new.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    unknown = sorted(set(options) - set(SOURCE_OPTIONS[source]))
    if unknown:
        accepted = ", ".join(SOURCE_OPTIONS[source]) or "none"
        raise ValueError(f"source {source!r} does not take option(s) {', '.join(unknown)}; it accepts: {accepted}")

    if source == "synthetic":
        from debate_lightning.data.synthetic import generate

        if path is not None:
            raise ValueError("source 'synthetic' generates its stories and takes no path")
        per_story = int(options.get("questions_per_story", 4))
        num_stories = options.get("num_stories")
        if num_stories is None:
            num_stories = math.ceil(limit / per_story) if limit is not None else DEFAULT_NUM_STORIES
        if exclude_runs and options.get("num_stories") is None and limit is not None:
            # stories are index-stable: generate enough extra for the excluded ones to be replaced
            num_stories += math.ceil(len(used_question_ids(exclude_runs)) / per_story)
        questions = generate(int(num_stories), seed=seed, questions_per_story=per_story, split=split)
    elif source == "run":
        if path is None:
            raise ValueError("source 'run' needs the directory of an earlier tournament run (--path DIR)")
        questions = run_questions(path)
        if split is not None:
            splits = sorted({q.split for q in questions})
            questions = [q for q in questions if q.split == split]
            if not questions and splits:
                raise ValueError(f"run {path} has no questions of split {split!r} (it has {', '.join(splits)}); "
                                 "set the split it has, or null for all")
    else:
        if path is None:
            raise ValueError(f"source {source!r} needs a path to its JSONL file (--path FILE)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{source} file not found: {path}")
        if source == "jsonl":
            from debate_lightning.data.jsonl import read_question_jsonl

            questions = read_question_jsonl(path, split=split)
        elif source == "quality":
            from debate_lightning.data.quality import read_quality

            questions = read_quality(path, split=split, seed=seed, **options)
        else:
            from debate_lightning.data.human_debates import load_human_debates

            questions = load_human_debates(path, split=split)
    if exclude_runs:
        used = used_question_ids(exclude_runs)
        before = len(questions)
        questions = [q for q in questions if q.question_id not in used]
        if before and not questions:
            raise ValueError(f"every {source} question ({before} records) was debated in exclude_runs {list(exclude_runs)}")
    cut = first_questions(questions, limit)
    if source == "run" and len(cut) < len(questions):
        log.warning("replaying %d of the %d questions and side orders of run %s (limit: %s); set limit: null "
                    "to replay all of it", len(cut), len(questions), path, limit)
    return with_both_orders(cut) if both_orders else cut


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m debate_lightning data",
        description="Print the questions a config would debate, one JSON object per line "
        "(one per question and side order).",
    )
    p.add_argument("--source", choices=SOURCES, default="synthetic", help="where the questions come from")
    p.add_argument("--path", help="the JSONL file (quality, human_debates, jsonl) or an earlier run's directory (run)")
    p.add_argument("--split", choices=SPLITS, help="keep one split (default: all)")
    p.add_argument("--limit", type=int, help="at most this many questions (before --both-orders)")
    p.add_argument("--seed", type=int, default=0, help="generator seed and side-order seed")
    p.add_argument("--both-orders", action="store_true", help="each question in both side orders")
    p.add_argument("--exclude-runs", nargs="+", action="extend", default=[], metavar="DIR",
                   help="drop every question these earlier runs debated (both side orders)")
    p.add_argument("--all-difficulties", action="store_true", help="quality: keep easy questions too")
    p.add_argument("--exclude-titles", metavar="DEBATES_JSONL",
                   help="quality: drop val/test stories debated in this debates-readable.jsonl")
    p.add_argument("--file-split", choices=("train", "dev", "test"),
                   help="quality: which official file this is (default: from its name)")
    p.add_argument("--num-stories", type=int, help="synthetic: how many stories to generate")
    p.add_argument("--questions-per-story", type=int, help="synthetic: questions per story")
    return p


def data_main(argv: list[str] | None = None) -> int:
    """The ``data`` command: load, then print each question as JSON; 2 on a user error."""
    args = _parser().parse_args(argv)
    options: dict[str, Any] = {}
    for flag, key, value in (
        ("--all-difficulties", "difficult_only", False if args.all_difficulties else None),
        ("--exclude-titles", "exclude_titles", args.exclude_titles),
        ("--file-split", "file_split", args.file_split),
        ("--num-stories", "num_stories", args.num_stories),
        ("--questions-per-story", "questions_per_story", args.questions_per_story),
    ):
        if value is not None:
            if key not in SOURCE_OPTIONS[args.source]:
                print(f"error: {flag} does not apply to --source {args.source}", file=sys.stderr)
                return 2
            options[key] = value
    try:
        questions = load_questions(args.source, path=args.path, split=args.split, limit=args.limit,
                                   seed=args.seed, both_orders=args.both_orders, exclude_runs=args.exclude_runs,
                                   **options)
    except (ValueError, OSError) as e:  # DataError is a ValueError: file, line and field included
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for q in questions:
            sys.stdout.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `… | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    where = f" from {args.path}" if args.path else ""
    print(f"{len(questions)} records ({args.source}{where}, split={args.split or 'all'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(data_main())
