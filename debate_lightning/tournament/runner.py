"""Play a tournament: build the agents once, play rounds in batched groups, append results."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from debate_lightning.data.question import Question
from debate_lightning.debate.agents import Debater, Judge
from debate_lightning.debate.best_of_n import OpponentBestOfNDebater
from debate_lightning.debate.engine import RoundResult, RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.debate.replay import REPLAY_BACKENDS, replay_debater
from debate_lightning.models.base import Generator
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.config import JudgeConfig, TournamentConfig
from debate_lightning.tournament.results import ResultsFile
from debate_lightning.tournament.schedule import schedule


class ResultsExist(FileExistsError):
    pass


def load_tournament_questions(cfg: TournamentConfig) -> list[Question]:
    return cfg.data.load()


def load_judge_probe(judge: JudgeConfig, prompt_sets: Iterable[str]):
    """``judge.probe`` as a ``LinearProbe`` (None without one), checked against the prompt sets of
    the formats it will judge. Cheap: called before any model loads, so a wrong path fails first."""
    if not judge.probe:
        return None
    from debate_lightning.models.probe import LinearProbe

    try:
        probe = LinearProbe.load(judge.probe, name=None if judge.probe_name is None else str(judge.probe_name))
        probe.check_prompt_sets(prompt_sets, "the judged formats")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"judge.probe: {e}") from None
    except ValueError as e:
        raise ValueError(f"judge.probe: {e}") from None
    return probe


def build_judge(judge: JudgeConfig, spec: ModelSpec, generator: Generator, probe=None) -> Judge:
    """The judge over ``generator`` (``judge.model``'s, built from ``spec``). With a probe
    (``load_judge_probe``), P(A) comes from the probe over the generator's hidden states at the
    verdict position instead of its A/B log-probs; a probe of another model is refused here."""
    if probe is None:
        return Judge(generator, both_orders=judge.both_orders, name=judge.model)
    from debate_lightning.models.probe import ProbeJudgeGenerator, probe_judge_name

    try:
        scorer = ProbeJudgeGenerator(generator, probe, model=spec.path, adapter=spec.adapter,
                                     name=probe_judge_name(judge.model, probe.name, probe.digest))
    except ValueError as e:
        raise ValueError(f"judge.probe with judge.model {judge.model!r}: {e}") from None
    return Judge(scorer, both_orders=judge.both_orders, name=scorer.name)


def build_agents(cfg: TournamentConfig, probe=None) -> tuple[dict[str, Debater], Judge, dict[str, Generator]]:
    """One generator per model key, shared by every debater (and the judge) that names it;
    ``probe``: the judge's (``load_judge_probe``; loaded here when not given)."""
    if probe is None:
        probe = load_judge_probe(cfg.judge, {f.prompts for f in cfg.formats})
    # Replay backends (human debates, an earlier run) are debaters, not generators: no model built.
    replayed = {key for key, spec in cfg.models.items() if spec.backend in REPLAY_BACKENDS}
    used = ({d.model for d in cfg.debaters} - replayed) | {cfg.judge.model}
    generators = {key: build_generator(cfg.models[key], name=key) for key in sorted(used)}
    judge = build_judge(cfg.judge, cfg.models[cfg.judge.model], generators[cfg.judge.model], probe)
    debaters: dict[str, Debater] = {}
    for i, d in enumerate(cfg.debaters):
        if d.model in replayed:
            if d.best_of_n > 1:
                raise ValueError(f"debaters[{i}].best_of_n: {d.name!r} replays recorded speeches "
                                 f"(backend {cfg.models[d.model].backend}); it has no candidates to choose from")
            debaters[d.name] = replay_debater(d.name, cfg.models[d.model], d.model, d.sampling())
            continue
        gen = generators[d.model]
        if d.best_of_n > 1:
            debaters[d.name] = OpponentBestOfNDebater(d.name, gen, d.sampling(), n=d.best_of_n, judge=judge,
                                                      opponent_n=d.opponent_n, selection=d.selection)
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


def check_resume_config(cfg: TournamentConfig, directory: Path) -> None:
    """Resuming with a different tournament would mix two experiments in one file: refuse.

    Keys that do not change what a round is (output, rounds_in_flight, model placement and batch
    sizes) may change between a run and its resume.
    """
    saved_path = directory / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg)))
    free = {"output", "rounds_in_flight"}
    placement = {"device", "max_batch_size", "dtype", "options", "base_url"}
    defaults = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(TournamentConfig())))
    diffs = []
    for key in sorted(set(saved) | set(now)):
        if key in free:
            continue
        # A key added after the run was saved counts as unchanged while it keeps its default
        # (also inside a section: judge.probe is newer than many saved runs).
        a, b = saved.get(key, defaults.get(key)), now.get(key)
        if key != "models" and isinstance(a, dict) and isinstance(defaults.get(key), dict):
            a = {**defaults[key], **a}
        if key == "models" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: {f: v for f, v in m.items() if f not in placement} for k, m in a.items()}
            b = {k: {f: v for f, v in m.items() if f not in placement} for k, m in b.items()}
        if a != b:
            diffs.append(key)
    if diffs:
        raise ValueError(
            f"--resume: the config differs from {saved_path} in {', '.join(diffs)}; resuming would mix two "
            "tournaments in one results file. Use a new --output, or restore the saved config."
        )


def run_tournament(
    cfg: TournamentConfig,
    output: str | Path | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> list[RoundResult]:
    """Play every scheduled round not yet done in ``output``; return all results there.

    Rounds are played ``rounds_in_flight`` at a time and appended as each group finishes, so a
    kill loses at most the group in flight; ``resume`` repairs a half-written last line and
    plays exactly the rounds that are missing or failed. Preference pairs of a group are written
    before its results; a resume drops pairs of rounds whose results never made it to disk.
    """
    from debate_lightning.tournament.preferences import filter_preferences

    cfg.check()
    probe = load_judge_probe(cfg.judge, {f.prompts for f in cfg.formats})
    out = Path(output or cfg.output)
    results = ResultsFile(out)
    if results.exists() and not resume:
        raise ResultsExist(f"{results.path} already holds results; pass --resume to continue it, or a new --output")
    if resume:
        check_resume_config(cfg, out)
    repaired = results.repair()
    if repaired:
        print(f"repaired {results.path}: dropped an incomplete last line ({repaired} bytes)", file=sys.stderr)
    save_config(cfg, out)
    pref_path = preferences_path(cfg, out)
    mode = cfg.preferences.mode

    questions = load_tournament_questions(cfg)
    specs = shard_rounds(schedule(questions, [d.name for d in cfg.debaters], cfg.formats, cfg.schedule), shard)
    done = results.done_ids()
    if mode.startswith("branched"):
        dropped = filter_preferences(pref_path, done)
        if dropped:
            print(f"dropped {dropped} preference pairs of rounds without saved results", file=sys.stderr)
    todo = [s for s in specs if s.round_id not in done]
    if not todo:
        print(f"all {len(specs)} rounds already in {results.path}", file=sys.stderr)
        _finish_preferences(cfg, results, pref_path)
        return list(results.latest())

    debaters, judge, generators = build_agents(cfg, probe)
    bar = Progress(len(specs), len(specs) - len(todo), progress)
    try:
        for start in range(0, len(todo), cfg.rounds_in_flight):
            group = todo[start : start + cfg.rounds_in_flight]
            seed = group_seed(cfg.seed, group[0].round_id)
            for d in debaters.values():
                d.params.seed = seed
            if mode.startswith("branched"):
                _play_branched_group(cfg, group, debaters, judge, results, pref_path, bar)
            else:
                run_rounds(group, debaters, judge, on_result=lambda r: (results.append(r), bar.update(1)))
    finally:
        bar.close()
        for g in generators.values():
            g.close()
    _finish_preferences(cfg, results, pref_path)
    return list(results.latest())


def preferences_path(cfg: TournamentConfig, out: Path) -> Path:
    from debate_lightning.tournament.preferences import PREFERENCES_FILE

    return Path(cfg.preferences.output) if cfg.preferences.output else out / PREFERENCES_FILE


def _pair_options(cfg: TournamentConfig):
    from debate_lightning.tournament.preferences import PairOptions

    p = cfg.preferences
    return PairOptions(reward=p.reward, temperature=p.temperature, pairing=p.pairing, min_margin=p.min_margin)


def _play_branched_group(cfg, group, debaters, judge, results: ResultsFile, pref_path: Path, bar) -> None:
    from debate_lightning.data.preferences import write_preferences
    from debate_lightning.tournament.preferences import branched_results, play_branched

    p = cfg.preferences
    trees = play_branched(group, debaters, judge, p.mode, p.branches, p.branch_side, seed=cfg.seed)
    pairs = [pair for tree in trees for pair in tree.pairs(_pair_options(cfg), p.mode)]
    write_preferences(pref_path, pairs, append=True)
    for r in branched_results(trees, judge):
        results.append(r)
        bar.update(1)


def _finish_preferences(cfg: TournamentConfig, results: ResultsFile, pref_path: Path) -> None:
    """Best-of-N pairs are a pure function of the saved results: (re)write them all at the end."""
    if cfg.preferences.mode != "best_of_n":
        return
    from debate_lightning.data.preferences import write_preferences
    from debate_lightning.tournament.preferences import best_of_n_pairs

    n = write_preferences(pref_path, best_of_n_pairs(results.latest(), _pair_options(cfg)))
    print(f"{n} best-of-N preference pairs -> {pref_path}", file=sys.stderr)


class Progress:
    """A tqdm bar on stderr: rounds done (including those of earlier runs), rounds per minute
    over this run, and the ETA at that rate."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        from tqdm import tqdm

        self.start, self.initial = time.perf_counter(), done
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} rounds [{elapsed}{postfix}]"
        self.bar = tqdm(
            total=total, initial=done, disable=not enabled, dynamic_ncols=True, file=sys.stderr, bar_format=fmt,
            desc="tournament", mininterval=0.5,
        )
        self.bar.set_postfix_str(", ETA ?", refresh=False)

    def rate(self, pending: int = 0) -> float:
        """Rounds per minute played by this process."""
        minutes = (time.perf_counter() - self.start) / 60
        return (self.bar.n + pending - self.initial) / minutes if minutes > 0 else 0.0

    def update(self, n: int = 1) -> None:
        rate = self.rate(pending=n)
        left = self.bar.total - self.bar.n - n
        eta = "?" if rate <= 0 else _clock(left / rate * 60)
        self.bar.set_postfix_str(f", {rate:.1f} rounds/min, ETA {eta}", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def summarize(results: Sequence[RoundResult]) -> dict:
    """Judge accuracy overall and per format (binary: winner == correct side)."""
    ok = [r for r in results if r.ok]
    by_format: dict[str, list[RoundResult]] = {}
    for r in ok:
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
