"""A study config (``configs/study/<size>.yaml``, optionally merged with ``--config FILE``) turned
into one ordinary config per stage, written beside the stage's results.

The study (Arnesen et al. 2024, "Training Language Models to Win Debates with Self-Play Improves
Judge Accuracy"; the NYU debate pipeline): SFT the debater, then K times: a best-of-N self-play
tournament whose scored candidates become preference pairs, and DPO on them from the previous
checkpoint; then one evaluation tournament of every checkpoint (base, SFT, DPO-1..K) in debate,
consultancy and blind (no-speech) formats on held-out questions, both side orders.

Every path a stage needs is fixed before any stage runs: a fit stage logs to
``OUT/<stage>/train/run`` (a fixed CSVLogger version, so ``--ckpt_path last`` resumes into the
same directory and the adapter is always at ``OUT/<stage>/train/run/adapter``); a tournament
stage writes into ``OUT/<stage>``. So planning is pure: the same study config writes the same
files, and a resumed study refuses a config that changed since the first run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from debate_lightning.config_files import SHIPPED_CONFIGS, resolve_config

SIZES = ("tiny", "small", "paper")
SIZES_DIR = SHIPPED_CONFIGS / "study"
STUDY_FILE = "study.yaml"  # the resolved study config, in OUT


class StudyConfigError(ValueError):
    """A study config that cannot run: says which key (or file) and why."""


@dataclass
class FitStage:
    """A training stage: a ``fit`` config plus overrides.

    Attributes:
        config: a fit config file, or the name of a shipped one (``sft.yaml``, ``dpo.yaml``).
        args: overrides as dotted keys (``trainer.max_steps: 8``,
            ``data.init_args.human_debates: debates-readable.jsonl``); a value replaces the whole
            entry (lists too).
    """

    config: str = "sft.yaml"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TournamentStage:
    """A tournament stage: the keys of a tournament config that the study does not set itself
    (it sets ``models``, ``debaters``' names and models, ``judge.model``, ``schedule``, ``output``).

    Attributes:
        data: the tournament's ``data`` (self-play: train-split questions; evaluation: held out).
        debater: sampling keys of every debater (``max_new_tokens``, ``temperature``,
            ``best_of_n``, ``opponent_n``, ``selection``, ...).
        formats: the tournament's ``formats``.
        preferences: the tournament's ``preferences`` (self-play: ``mode: best_of_n``).
        judge_both_orders: judge each transcript in both answer orders and average.
        cross_play: evaluation only: every ordered pair of checkpoints also debates (what the
            Bradley–Terry ratings are fitted on), besides each checkpoint against itself.
        rounds_in_flight: rounds played together.
    """

    data: dict[str, Any] = field(default_factory=dict)
    debater: dict[str, Any] = field(default_factory=dict)
    formats: list[dict[str, Any]] = field(default_factory=lambda: [{"kind": "debate", "num_speeches": 1}])
    preferences: dict[str, Any] = field(default_factory=dict)
    judge_both_orders: bool = True
    cross_play: bool = False
    rounds_in_flight: int = 32


@dataclass
class ReportConfig:
    """Attributes:
        bootstrap: bootstrap replicates of every 95% interval (questions resampled).
        seed: bootstrap seed.
        plots: write the PNGs.
    """

    bootstrap: int = 1000
    seed: int = 0
    plots: bool = True


@dataclass
class StudyConfig:
    """The whole study.

    Attributes:
        model: the debaters' base model (``embedded``, a directory, a hub id): the policy every
            fit stage trains and the ``base`` checkpoint of the evaluation.
        model_options: the ``models`` entry keys of every debater checkpoint besides ``path`` and
            ``adapter`` (``dtype``, ``device``, ``max_batch_size``, ``options``).
        judge: the judge's ``models`` entry (any backend: ``hf``, ``openai``, ``anthropic``, ...).
        probe: a probe directory (``fit --config probe.yaml``) of the judge's model: the
            evaluation is then rejudged by it and the report sets it beside the LLM judge.
        dpo_rounds: K, the self-play + DPO iterations.
        sft, selfplay, dpo, evaluation, report: the stages.
    """

    model: str = "embedded"
    model_options: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] = field(default_factory=lambda: {"backend": "hf", "path": "embedded"})
    probe: str | None = None
    dpo_rounds: int = 2
    sft: FitStage = field(default_factory=FitStage)
    selfplay: TournamentStage = field(default_factory=TournamentStage)
    dpo: FitStage = field(default_factory=lambda: FitStage(config="dpo.yaml"))
    evaluation: TournamentStage = field(default_factory=TournamentStage)
    report: ReportConfig = field(default_factory=ReportConfig)
    seed: int = 0

    def checkpoints(self) -> list[str]:
        """The evaluated debaters, in training order."""
        return ["base", "sft"] + [f"dpo_{k}" for k in range(1, self.dpo_rounds + 1)]


# --------------------------------------------------------------------------- loading


def load_study_config(size: str = "tiny", extra: str | None = None) -> tuple[StudyConfig, dict]:
    """``configs/study/<size>.yaml`` deep-merged with ``extra`` (a YAML file); the checked config
    and the merged mapping it came from."""
    if size not in SIZES:
        raise StudyConfigError(f"--size {size!r}: unknown size; choose one of {', '.join(SIZES)}")
    merged = _read_yaml(SIZES_DIR / f"{size}.yaml")
    if extra is not None:
        if not Path(extra).is_file():
            raise StudyConfigError(f"--config {extra}: no such file")
        merged = deep_merge(merged, _read_yaml(Path(extra)))
    return from_mapping(merged), merged


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"{path}: expected a mapping of study keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def from_mapping(data: dict) -> StudyConfig:
    """A ``StudyConfig`` from a mapping; an unknown key or a bad value names its dotted path."""
    cfg = _build(StudyConfig, data, "")
    if not isinstance(cfg.dpo_rounds, int) or cfg.dpo_rounds < 1:
        raise StudyConfigError(f"dpo_rounds: expected an integer >= 1, got {cfg.dpo_rounds!r}")
    if cfg.selfplay.preferences.get("mode", "best_of_n") != "best_of_n":
        raise StudyConfigError("selfplay.preferences.mode: the study's self-play is best-of-N; "
                               f"got {cfg.selfplay.preferences['mode']!r}")
    if int(cfg.selfplay.debater.get("best_of_n", 1)) < 2:
        raise StudyConfigError("selfplay.debater.best_of_n: best-of-N self-play needs best_of_n >= 2")
    return cfg


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise StudyConfigError(f"{where or 'study config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        at = f"{where}." if where else ""
        raise StudyConfigError(f"{at}{unknown[0]}: unknown key; known keys{' of ' + where if where else ''}: "
                               f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        nested = {"sft": FitStage, "dpo": FitStage, "selfplay": TournamentStage, "evaluation": TournamentStage,
                  "report": ReportConfig}.get(name) if cls is StudyConfig else None
        kwargs[name] = _build(nested, value or {}, path) if nested else value
    return cls(**kwargs)


# --------------------------------------------------------------------------- stage configs


def stage_names(cfg: StudyConfig) -> list[str]:
    """Every stage, in the order the script runs them."""
    names = ["sft"]
    for k in range(1, cfg.dpo_rounds + 1):
        names += [f"selfplay_{k}", f"dpo_{k}"]
    return names + ["eval"] + (["eval_probe"] if cfg.probe else []) + ["report"]


def adapter_dir(out: Path, stage: str) -> Path:
    """Where a fit stage's adapter lands (fixed logger name and version, see the module doc)."""
    return out / stage / "train" / "run" / "adapter"


def checkpoint_adapter(out: Path, checkpoint: str) -> Path | None:
    return None if checkpoint == "base" else adapter_dir(out, checkpoint)


def write_plan(out: str | Path, cfg: StudyConfig, merged: dict) -> list[Path]:
    """Write ``OUT/study.yaml`` and every stage's config; returns the files written. A study
    directory planned with another config is refused (its stages would mix two studies)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.asdict(cfg)
    saved = out / STUDY_FILE
    if saved.is_file():
        before = yaml.safe_load(saved.read_text())
        if before != json.loads(json.dumps(resolved)):
            changed = sorted(k for k in set(before) | set(resolved) if before.get(k) != resolved.get(k))
            raise StudyConfigError(f"{out} holds a study planned with another config (differs in: "
                                   f"{', '.join(changed)}); use a new OUTDIR, or delete {saved} to start over")
    saved.write_text("# The resolved study config (configs/study/<size>.yaml + --config).\n"
                     + yaml.safe_dump(resolved, sort_keys=False))
    written = [saved]
    previous = None  # the adapter the next stage starts from
    written.append(_write(out / "sft" / "fit.yaml", fit_config(cfg.sft, cfg, out, "sft", adapter=None, data=None)))
    previous = adapter_dir(out, "sft")
    for k in range(1, cfg.dpo_rounds + 1):
        sp = f"selfplay_{k}"
        written.append(_write(out / sp / "tournament.yaml", selfplay_config(cfg, out, sp, previous)))
        pairs = out / sp / "preferences.jsonl"
        dpo = f"dpo_{k}"
        written.append(_write(out / dpo / "fit.yaml", fit_config(cfg.dpo, cfg, out, dpo, adapter=previous,
                                                                  data={"data.init_args.train": [str(pairs)]})))
        previous = adapter_dir(out, dpo)
    written.append(_write(out / "eval" / "tournament.yaml", evaluation_config(cfg, out)))
    if cfg.probe:
        written.append(_write(out / "eval_probe" / "judge.yaml", probe_judge_config(cfg, out)))
    return written


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = copy.deepcopy(value)


def fit_config(stage: FitStage, cfg: StudyConfig, out: Path, name: str, adapter: Path | None,
               data: dict[str, Any] | None) -> dict:
    """The full fit config of one training stage: the named config, the stage's overrides, the
    study's model and the previous checkpoint, and a log directory of its own."""
    try:
        path, _ = resolve_config(stage.config)
    except FileNotFoundError as e:
        raise StudyConfigError(f"{name}.config: {e}") from None
    config = yaml.safe_load(Path(path).read_text()) or {}
    for key, value in stage.args.items():
        set_dotted(config, key, value)
    set_dotted(config, "seed_everything", cfg.seed)
    set_dotted(config, "model.init_args.policy.model", cfg.model)
    set_dotted(config, "model.init_args.policy.adapter", None if adapter is None else str(adapter))
    for key, value in (data or {}).items():
        set_dotted(config, key, value)
    set_dotted(config, "trainer.default_root_dir", str(out / name))
    # A fixed version: --ckpt_path last resumes into the same directory, the adapter lands where
    # the next stage looks for it.
    set_dotted(config, "trainer.logger", {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"name": "train", "version": "run"}})
    return config


def _model(cfg: StudyConfig, adapter: Path | None) -> dict:
    spec = {"backend": "hf", **cfg.model_options, "path": cfg.model}
    if adapter is not None:
        spec["adapter"] = str(adapter)
    return spec


def _tournament(cfg: StudyConfig, stage: TournamentStage, out: Path, models: dict, debaters: list[str],
                schedule: dict, preferences: dict | None) -> dict:
    config = {
        "data": {"seed": cfg.seed, "both_orders": True, **stage.data},
        "models": {**models, "judge": dict(cfg.judge)},
        "debaters": [{**stage.debater, "name": d, "model": d} for d in debaters],
        "judge": {"model": "judge", "both_orders": stage.judge_both_orders},
        "formats": copy.deepcopy(stage.formats),
        "schedule": schedule,
        "output": str(out),
        "rounds_in_flight": stage.rounds_in_flight,
        "seed": cfg.seed,
    }
    if preferences is not None:
        config["preferences"] = preferences
    return config


def selfplay_config(cfg: StudyConfig, out: Path, stage: str, adapter: Path) -> dict:
    """Best-of-N self-play of the latest checkpoint on train-split questions; the judge's scores
    of the candidates become ``OUT/<stage>/preferences.jsonl``."""
    s = cfg.selfplay
    return _tournament(cfg, s, out / stage, {"policy": _model(cfg, adapter)}, ["policy"],
                       {"kind": "self_play"}, {"mode": "best_of_n", **s.preferences})


def evaluation_config(cfg: StudyConfig, out: Path) -> dict:
    """Every checkpoint on held-out questions in every evaluation format: each against itself,
    and with ``cross_play`` every ordered pair too (consultancy and blind rounds do not depend on
    the opponent, so the schedule keeps one of each)."""
    names = cfg.checkpoints()
    models = {n: _model(cfg, checkpoint_adapter(out, n)) for n in names}
    pairs = [[n, n] for n in names]
    if cfg.evaluation.cross_play:
        pairs += [[a, b] for a in names for b in names if a != b]
    return _tournament(cfg, cfg.evaluation, out / "eval", models, names, {"kind": "custom", "matchups": pairs}, None)


def probe_judge_config(cfg: StudyConfig, out: Path) -> dict:
    """The ``rejudge`` config that re-scores the evaluation rounds with the probe."""
    return {"models": {"judge": dict(cfg.judge)},
            "judge": {"model": "judge", "both_orders": cfg.evaluation.judge_both_orders, "probe": cfg.probe},
            "output": str(out / "eval_probe"), "rounds_in_flight": cfg.evaluation.rounds_in_flight}


def check_tournament_configs(out: Path, cfg: StudyConfig) -> None:
    """Parse every tournament config the plan wrote with the tournament's own parser, so a bad
    key fails now rather than after an hour of training."""
    from debate_lightning.tournament.cli import parse_tournament_args

    for stage in [f"selfplay_{k}" for k in range(1, cfg.dpo_rounds + 1)] + ["eval"]:
        path = out / stage / "tournament.yaml"
        try:
            tournament, _ = parse_tournament_args(["--config", str(path)])
            tournament.check()
        except Exception as e:  # jsonargparse raises several types; all mean the same here
            raise StudyConfigError(f"{path} (from the study config's "
                                   f"{'evaluation' if stage == 'eval' else 'selfplay'} keys): {e}") from None
