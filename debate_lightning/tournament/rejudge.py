"""Re-score a saved tournament with another judge, without regenerating a single speech.

Each finished round's transcript is rebuilt from its JSON line (``RoundResult.transcript``) and
judged again in batched calls; the new results keep the round ids, speeches and quote checks and
change only the judge, its probabilities and the verdict. The new directory is an ordinary
results directory: ``report``, ``merge`` and ``--resume`` work on it. Rounds that failed in the
source run (no complete transcript) are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml

from debate_lightning.debate.engine import RoundResult, RoundSpec, judge_transcripts
from debate_lightning.debate.formats import Format
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.config import JudgeConfig
from debate_lightning.tournament.results import ResultsFile


def spec_of(r: RoundResult) -> RoundSpec:
    """The RoundSpec a saved round was played from (its id is recomputed and must match)."""
    tr = r.transcript()
    spec = RoundSpec(tr.question, tr.format, (r.debaters[0], r.debaters[1]), repeat=r.repeat)
    if spec.round_id != r.round_id:
        raise ValueError(f"round {r.round_id}: its saved question/format give id {spec.round_id}; the line was edited?")
    return spec


def rejudge(
    source: str | Path,
    output: str | Path,
    models: dict[str, ModelSpec],
    judge: JudgeConfig,
    rounds_in_flight: int = 32,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Judge every finished round of ``source`` with ``judge`` and write them to ``output``
    (with ``judge.probe``, a linear probe over the judge model's activations gives P(A))."""
    from debate_lightning.tournament.runner import Progress, ResultsExist, build_judge, load_judge_probe

    if judge.model not in models:
        raise ValueError(f"judge.model: {judge.model!r} is not a key of models ({sorted(models)})")
    src, dest = ResultsFile(source), ResultsFile(output)
    if not src.path.is_file():
        raise FileNotFoundError(f"no results to re-judge at {src.path}")
    if Path(source).resolve() == Path(output).resolve():
        raise ValueError("rejudge writes a new results directory: --output must differ from the source")
    if dest.exists() and not resume:
        raise ResultsExist(f"{dest.path} already holds results; pass --resume to continue it, or a new --output")
    dest.repair()
    rounds = list(src.latest())
    finished = [r for r in rounds if r.ok]
    done = dest.done_ids()
    todo = [r for r in finished if r.round_id not in done]
    # The probe must have seen the prompt sets of every format it is about to judge.
    probe = load_judge_probe(judge, {Format(**r.format).prompts for r in finished})
    _save_config(Path(source), Path(output), models, judge)

    generator = build_generator(models[judge.model], name=judge.model)
    try:
        new_judge = build_judge(judge, models[judge.model], generator, probe)
        other = sorted({r.judge for r in dest.results() if r.ok} - {new_judge.name})
        if other:  # a resume with another judge (or probe) would mix two judges' verdicts in one file
            raise ValueError(f"--resume: {dest.path} holds rounds judged by {other}, this run's judge is "
                             f"{new_judge.name!r}; use a new --output")
    except ValueError:
        generator.close()
        raise
    bar = Progress(len(finished), len(finished) - len(todo), progress)
    try:
        for start in range(0, len(todo), rounds_in_flight):
            group = todo[start : start + rounds_in_flight]
            specs = [spec_of(r) for r in group]
            for old, new in zip(group, judge_transcripts(specs, [r.transcript() for r in group], new_judge)):
                new.timings = {**old.timings, "judge": new.timings.get("judge", 0.0)}
                dest.append(new)
                bar.update(1)
    finally:
        bar.close()
        generator.close()
    summary = {
        "source": str(source),
        "judge": new_judge.name,
        "rounds": len(finished),
        "rejudged_now": len(todo),
        "skipped_failed": len(rounds) - len(finished),
    }
    (Path(output) / "rejudge.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _save_config(source: Path, output: Path, models: dict[str, ModelSpec], judge: JudgeConfig) -> None:
    """The source's config with the new judge (and its model) swapped in, so the output
    directory says exactly what produced it."""
    output.mkdir(parents=True, exist_ok=True)
    cfg = {}
    if (source / "config.yaml").is_file():
        cfg = yaml.safe_load((source / "config.yaml").read_text()) or {}
    cfg.setdefault("models", {})
    spec = dataclasses.asdict(models[judge.model])
    key = judge.model
    if cfg["models"].get(key, spec) != spec:  # the name means another model in the source run
        key = f"{key}_rejudge"
    cfg["models"][key] = spec
    cfg["judge"] = {**dataclasses.asdict(judge), "model": key}
    cfg["output"] = str(output)
    (output / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with_probe = f" and probe {judge.probe}" if judge.probe else ""
    print(f"re-judging {source} with {judge.model!r}{with_probe} -> {output}", file=sys.stderr)

