"""Play a tournament: build the agents once, play rounds in batched groups, append results."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from debate_lightning.data.question import Question
from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge
from debate_lightning.debate.engine import RoundResult, RoundSpec, run_rounds
from debate_lightning.models.base import Generator
from debate_lightning.models.registry import build_generator
from debate_lightning.tournament.config import TournamentConfig
from debate_lightning.tournament.results import ResultsFile
from debate_lightning.tournament.schedule import schedule


class ResultsExist(FileExistsError):
    pass


def load_tournament_questions(cfg: TournamentConfig) -> list[Question]:
    from debate_lightning.data.loading import load_questions

    d = cfg.data
    return load_questions(
        d.source, path=d.path, split=d.split, limit=d.limit, seed=d.seed, both_orders=d.both_orders, **d.options
    )


def build_agents(cfg: TournamentConfig) -> tuple[dict[str, Debater], Judge, dict[str, Generator]]:
    """One generator per model key, shared by every debater (and the judge) that names it."""
    used = {d.model for d in cfg.debaters} | {cfg.judge.model}
    generators = {key: build_generator(cfg.models[key], name=key) for key in sorted(used)}
    judge = Judge(generators[cfg.judge.model], both_orders=cfg.judge.both_orders, name=cfg.judge.model)
    debaters: dict[str, Debater] = {}
    for d in cfg.debaters:
        gen = generators[d.model]
        if d.best_of_n > 1:
            debaters[d.name] = BestOfNDebater(d.name, gen, d.sampling(), n=d.best_of_n, judge=judge)
        else:
            debaters[d.name] = Debater(d.name, gen, d.sampling())
    return debaters, judge, generators


def shard_rounds(specs: Sequence[RoundSpec], shard: tuple[int, int] | None) -> list[RoundSpec]:
    """Shard ``i`` of ``n`` (0-based) takes every n-th round: disjoint, and together complete."""
    if shard is None:
        return list(specs)
    i, n = shard
    return [s for k, s in enumerate(specs) if k % n == i]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def save_config(cfg: TournamentConfig, directory: Path) -> None:
    """The resolved config beside the results. Configs hold env var names, never API keys."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def group_seed(seed: int, first_round_id: str) -> int:
    return (seed * 1_000_003 + int(first_round_id[:8], 16)) % (2**31)


def run_tournament(
    cfg: TournamentConfig,
    output: str | Path | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> list[RoundResult]:
    """Play every scheduled round not yet done in ``output``; return all results there."""
    cfg.check()
    out = Path(output or cfg.output)
    results = ResultsFile(out)
    if results.exists() and not resume:
        raise ResultsExist(f"{results.path} already holds results; pass --resume to continue it, or a new --output")
    repaired = results.repair()
    if repaired:
        print(f"repaired {results.path}: dropped an incomplete last line ({repaired} bytes)", file=sys.stderr)
    save_config(cfg, out)

    questions = load_tournament_questions(cfg)
    specs = shard_rounds(schedule(questions, [d.name for d in cfg.debaters], cfg.formats, cfg.schedule), shard)
    done = results.done_ids()
    todo = [s for s in specs if s.round_id not in done]
    if not todo:
        print(f"all {len(specs)} rounds already in {results.path}", file=sys.stderr)
        return list(results.latest())

    debaters, judge, generators = build_agents(cfg)
    bar = _progress(len(specs), len(specs) - len(todo), progress)
    try:
        for start in range(0, len(todo), cfg.rounds_in_flight):
            group = todo[start : start + cfg.rounds_in_flight]
            seed = group_seed(cfg.seed, group[0].round_id)
            for d in debaters.values():
                d.params.seed = seed
            run_rounds(group, debaters, judge, on_result=lambda r: (results.append(r), bar.update(1)))
    finally:
        bar.close()
        for g in generators.values():
            g.close()
    return list(results.latest())


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="round", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
    bar.set_description("rounds")
    return bar


def summarize(results: Sequence[RoundResult]) -> dict:
    """Judge accuracy overall and per format (binary: winner == correct side)."""
    ok = [r for r in results if r.ok]
    by_format: dict[str, list[RoundResult]] = {}
    for r in ok:
        from debate_lightning.debate.formats import Format

        by_format.setdefault(Format(**r.format).name, []).append(r)

    def acc(rs):
        return sum(bool(r.judge_correct) for r in rs) / len(rs) if rs else float("nan")

    def prob_acc(rs):
        return sum(r.p_a if r.correct_index == 0 else 1 - r.p_a for r in rs) / len(rs) if rs else float("nan")

    return {
        "rounds": len(results),
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "judge_accuracy": acc(ok),
        "judge_prob_correct": prob_acc(ok),
        "by_format": {k: {"rounds": len(v), "judge_accuracy": acc(v), "judge_prob_correct": prob_acc(v)} for k, v in by_format.items()},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
