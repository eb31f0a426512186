"""Callbacks that measure what debate research cares about while a policy trains.

``JudgeEvaluation`` plays rounds on held-out questions with the current policy on every side
and logs how well the judge does: ``judge/accuracy`` (share of rounds the judge got right),
``judge/prob_correct`` (mean probability it gave the correct answer) and ``judge/ece`` (expected
calibration error of its P(A), ``tournament.metrics.calibration``).

``TournamentValidation`` plays the current policy against a fixed baseline debater (by default
the initial model: the policy with its adapters off, or a frozen copy taken at fit start), each
question in both side assignments, and logs ``tournament/win_rate`` (share of rounds the policy
won), ``tournament/p_policy`` (mean judge probability for the policy's side),
``tournament/rating_diff`` (Bradley–Terry rating of policy minus baseline, in Elo points) and
``tournament/judge_accuracy``.

Both run when validation ends (if the trainer validates) or else when the training epoch ends,
every ``every_n_epochs`` epochs, and optionally once before training (``at_start``). Their
sampling is seeded the same way at every evaluation, so epochs are compared on equal terms. The
judge defaults to the rollout DataModule's judge (no second copy); rounds are played in one
batched group, no grad, dropout off. On N processes each rank plays its round-robin share of the
rounds and every rank computes the metrics over all of them (``training/distributed.py``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from debate_lightning.data.config import DataConfig
from debate_lightning.data.question import Question
from debate_lightning.debate.agents import Debater, Judge
from debate_lightning.debate.engine import RoundResult, RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import Generator, SamplingParams
from debate_lightning.models.hf import live_generator
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.metrics import bradley_terry, calibration, judged
from debate_lightning.training.distributed import gather_json, shard
from debate_lightning.training.online.datamodule import DebateRolloutDataModule
from debate_lightning.training.reference import initial_model_generator

_DEFAULT_SAMPLING = SamplingParams(max_new_tokens=48, temperature=0.7)


class _DebateEvaluation(Callback):
    """Shared plumbing: when to run, the held-out questions, the judge, logging."""

    prefix = "eval"

    def __init__(self, questions: DataConfig, format: Format | None, every_n_epochs: int,
                 sampling: SamplingParams | None, judge: ModelSpec | None, judge_both_orders: bool,
                 at_start: bool, max_batch_size: int, seed: int, judge_probe: str | None = None,
                 judge_probe_name: str | None = None):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.questions_config, self.format, self.every_n_epochs = questions, format, every_n_epochs
        self.sampling, self.judge_spec, self.judge_both_orders = sampling, judge, judge_both_orders
        self.at_start, self.max_batch_size, self.seed = at_start, max_batch_size, seed
        self.judge_probe, self.judge_probe_name = judge_probe, judge_probe_name
        self.history: list[dict[str, float]] = []
        self._questions: list[Question] | None = None
        self._judge_generator: Generator | None = None
        self._done_epoch: int | None = None

    # -- pieces -------------------------------------------------------------------------------
    def questions(self) -> list[Question]:
        if self._questions is None:
            d = self.questions_config
            self._questions = d.load()
            if not self._questions:
                raise ValueError(f"{type(self).__name__}: questions (split {d.split!r}) gave no questions")
        return self._questions

    def judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Judge:
        dm = getattr(trainer, "datamodule", None)
        if self.judge_spec is None and isinstance(dm, DebateRolloutDataModule):
            judge = dm.judge(pl_module)
            # the rollout judge's weights: the policy's base (judge_from_policy) or its judge spec
            from_policy = dm.judges_from_policy(pl_module)
            model = pl_module.policy_config.model if from_policy else dm.judge_spec.path
            adapter = None if from_policy else dm.judge_spec.adapter
            return self._with_probe(judge, trainer, model, adapter)
        if self._judge_generator is None:
            self._judge_generator = build_generator(self.judge_spec or ModelSpec(dtype="float32"), name="judge")
        spec = self.judge_spec or ModelSpec(dtype="float32")
        judge = Judge(self._judge_generator, both_orders=self.judge_both_orders, name="judge")
        return self._with_probe(judge, trainer, spec.path, spec.adapter)

    def _with_probe(self, judge: Judge, trainer: pl.Trainer, model: str, adapter: str | None) -> Judge:
        """``judge`` itself, or with ``judge_probe`` a judge whose P(A) is the probe's over the
        same model's hidden states at the verdict position (both orders, as the LLM judge)."""
        if not self.judge_probe:
            return judge
        from debate_lightning.models.probe import LinearProbe, ProbeJudgeGenerator

        probe = LinearProbe.load(self.judge_probe, name=self.judge_probe_name)
        probe.check_prompt_sets([self.round_format(trainer).prompts], f"{type(self).__name__}'s format")
        scorer = ProbeJudgeGenerator(judge.generator, probe, model=model, adapter=adapter)
        return Judge(scorer, both_orders=judge.both_orders, name=scorer.name)

    def round_format(self, trainer: pl.Trainer) -> Format:
        if self.format is not None:
            return self.format
        dm = getattr(trainer, "datamodule", None)
        return dm.format if isinstance(dm, DebateRolloutDataModule) else Format(kind="debate", num_speeches=1)

    def params(self, trainer: pl.Trainer) -> SamplingParams:
        if self.sampling is not None:
            return self.sampling
        dm = getattr(trainer, "datamodule", None)
        return dm.sampling if isinstance(dm, DebateRolloutDataModule) else _DEFAULT_SAMPLING

    def policy(self, pl_module: pl.LightningModule) -> Debater:
        gen = live_generator(pl_module.policy, pl_module.tokenizer, "policy", self.max_batch_size)
        return Debater("policy", gen, self._params)

    # -- running ------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Play the rounds now and return the metrics (also appended to ``history``)."""
        self._params = dataclasses.replace(self.params(trainer), seed=None)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # same noise every evaluation; training RNG untouched
            torch.manual_seed(self.seed)
            results = self.play(trainer, pl_module)
        metrics = self.metrics(results)
        metrics[f"{self.prefix}/seconds"] = time.perf_counter() - start
        self.history.append({**metrics, "epoch": float(trainer.current_epoch)})
        rank_zero_info(f"{type(self).__name__} (epoch {trainer.current_epoch}): "
                       + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def play(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[RoundResult]:
        """Every round of ``round_specs``; on N processes each rank plays its share and all get all."""
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        mine = shard(self.round_specs(trainer), rank, world)
        results = run_rounds(mine, self.debaters(pl_module), self.judge(trainer, pl_module)) if mine else []
        if world == 1:
            return results
        every = gather_json(trainer, [r.to_dict() for r in results])
        return [RoundResult.from_dict(d) for part in every for d in part]

    def round_specs(self, trainer: pl.Trainer) -> list[RoundSpec]:
        raise NotImplementedError

    def debaters(self, pl_module: pl.LightningModule) -> dict[str, Debater]:
        raise NotImplementedError

    def metrics(self, results: Sequence[RoundResult]) -> dict[str, float]:
        raise NotImplementedError

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self._done_epoch != trainer.current_epoch

    def _run_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done_epoch = trainer.current_epoch
        for key, value in self.evaluate(trainer, pl_module).items():
            if not math.isnan(value):  # every rank holds every round's result: equal values, sync_dist keeps them
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start:
            metrics = {k: v for k, v in self.evaluate(trainer, pl_module).items() if not math.isnan(v)}
            for logger in trainer.loggers:  # self.log is not allowed in on_fit_start
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit" and self._due(trainer):
            self._run_and_log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._due(trainer):
            self._run_and_log(trainer, pl_module)


class JudgeEvaluation(_DebateEvaluation):
    """Judge accuracy and calibration on held-out debates by the current policy.

    Args:
        questions: held-out questions (``split: val``; ``both_orders`` plays each side order).
        format: round format; null uses the rollout DataModule's (or a one-speech debate).
        every_n_epochs: evaluate every n-th epoch.
        sampling: the policy's sampling; null uses the rollout DataModule's.
        judge: the judge model; null reuses the rollout DataModule's judge.
        judge_both_orders: judge in both answer orders (when ``judge`` is given).
        at_start: also evaluate once before training (the untrained policy's numbers).
        max_batch_size: most sequences per generate call.
        seed: sampling seed, the same at every evaluation.
        judge_probe: a linear probe (``fit --config probe.yaml``'s run directory or probe.safetensors)
            that judges instead of the judge model's A/B log-probs, over that model's activations.
        judge_probe_name: which probe of the file (a layer like ``-1``, or ``concat``); null: its best.
    """

    prefix = "judge"

    def __init__(self, questions: DataConfig = DataConfig(split="val", limit=8, both_orders=True),
                 format: Format | None = None, every_n_epochs: int = 1, sampling: SamplingParams | None = None,
                 judge: ModelSpec | None = None, judge_both_orders: bool = True, at_start: bool = False,
                 max_batch_size: int = 32, seed: int = 0, judge_probe: str | None = None,
                 judge_probe_name: str | None = None):
        super().__init__(questions, format, every_n_epochs, sampling, judge, judge_both_orders, at_start,
                         max_batch_size, seed, judge_probe, judge_probe_name)

    def round_specs(self, trainer: pl.Trainer) -> list[RoundSpec]:
        fmt = self.round_format(trainer)
        names = {"consultancy": ("policy", "") if fmt.consultant_side == 0 else ("", "policy")}.get(
            fmt.kind, ("policy", "policy"))
        return [RoundSpec(q, fmt, names) for q in self.questions()]

    def debaters(self, pl_module: pl.LightningModule) -> dict[str, Debater]:
        return {"policy": self.policy(pl_module)}

    def metrics(self, results: Sequence[RoundResult]) -> dict[str, float]:
        rs = judged(results)
        p_correct = [r.p_a if r.correct_index == 0 else 1.0 - r.p_a for r in rs]  # type: ignore[operator]
        return {
            "judge/accuracy": _mean([float(bool(r.judge_correct)) for r in rs]),
            "judge/prob_correct": _mean(p_correct),
            "judge/ece": float(calibration(rs)["ece"]) if rs else math.nan,
            "judge/rounds": float(len(rs)),
        }


class TournamentValidation(_DebateEvaluation):
    """The current policy against a fixed baseline debater, each question with both side assignments.

    Args:
        questions: held-out questions (``split: val``).
        format: a two-sided format (``debate``, ``double_consultancy``); null: a one-speech debate.
        baseline: the baseline debater's model; null = the initial model (the policy with its
            adapters off, or a frozen copy of a fully fine-tuned policy taken at fit start).
        every_n_epochs: evaluate every n-th epoch.
        sampling: sampling of both debaters; null uses the rollout DataModule's.
        judge: the judge model; null reuses the rollout DataModule's judge.
        judge_both_orders: judge in both answer orders (when ``judge`` is given).
        at_start: also play once before training (≈ 50% win rate: the policy is the baseline).
        max_batch_size: most sequences per generate call.
        seed: sampling seed, the same at every evaluation.
        judge_probe: a linear probe that judges instead of the judge model's A/B log-probs (see
            ``JudgeEvaluation``).
        judge_probe_name: which probe of the file; null: its best.
    """

    prefix = "tournament"

    def __init__(self, questions: DataConfig = DataConfig(split="val", limit=4, both_orders=False),
                 format: Format | None = None, baseline: ModelSpec | None = None, every_n_epochs: int = 1,
                 sampling: SamplingParams | None = None, judge: ModelSpec | None = None,
                 judge_both_orders: bool = True, at_start: bool = False, max_batch_size: int = 32, seed: int = 0,
                 judge_probe: str | None = None, judge_probe_name: str | None = None):
        super().__init__(questions, format, every_n_epochs, sampling, judge, judge_both_orders, at_start,
                         max_batch_size, seed, judge_probe, judge_probe_name)
        if format is not None and len(format.sides) != 2:
            raise ValueError(f"TournamentValidation needs a two-sided format, got {format.kind!r}")
        self.baseline_spec = baseline
        self._baseline: Generator | None = None

    def round_format(self, trainer: pl.Trainer) -> Format:
        fmt = super().round_format(trainer)
        return fmt if len(fmt.sides) == 2 else Format(kind="debate", num_speeches=fmt.num_speeches,
                                                      word_limit=fmt.word_limit)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._baseline is None:  # before any update: a frozen copy taken here IS the initial model
            if self.baseline_spec is not None:
                self._baseline = build_generator(self.baseline_spec, name="baseline")
            else:
                self._baseline = initial_model_generator(pl_module.policy, pl_module.tokenizer, "baseline",
                                                         self.max_batch_size)

    def round_specs(self, trainer: pl.Trainer) -> list[RoundSpec]:
        fmt = self.round_format(trainer)
        return [RoundSpec(q, fmt, names) for q in self.questions()
                for names in (("policy", "baseline"), ("baseline", "policy"))]

    def debaters(self, pl_module: pl.LightningModule) -> dict[str, Debater]:
        return {"policy": self.policy(pl_module), "baseline": Debater("baseline", self._baseline, self._params)}

    def metrics(self, results: Sequence[RoundResult]) -> dict[str, float]:
        rs = judged(results)
        p_policy = [r.p_a if r.debaters[0] == "policy" else 1.0 - r.p_a for r in rs]  # type: ignore[operator]
        out = {
            "tournament/win_rate": _mean([float(r.debaters[r.winner] == "policy") for r in rs]),  # type: ignore[index]
            "tournament/p_policy": _mean(p_policy),
            "tournament/judge_accuracy": _mean([float(bool(r.judge_correct)) for r in rs]),
            "tournament/rounds": float(len(rs)),
        }
        bt = bradley_terry(rs, n_boot=0) if rs else None
        if bt is not None:
            ratings = bt["ratings"]
            out["tournament/rating_diff"] = ratings["policy"]["elo"] - ratings["baseline"]["elo"]
        return out


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


__all__ = ["JudgeEvaluation", "TournamentValidation"]
