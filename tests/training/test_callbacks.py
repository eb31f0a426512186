"""JudgeEvaluation and TournamentValidation: their metrics, by hand and from a tiny training run."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest

from debate_lightning.data.config import DataConfig
from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.formats import Format
from debate_lightning.models.hf import live_generator
from debate_lightning.training.callbacks import JudgeEvaluation, TournamentValidation
from debate_lightning.training.online.online_dpo import OnlineDPOModule
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, completion_ids, prompt_ids

from .conftest import PROMPT
from .test_online_dpo import logged, read_metrics, tiny_datamodule


def _round(debaters, p_a, correct, qid="q"):
    winner = 0 if p_a >= 0.5 else 1
    return RoundResult(round_id=f"{qid}{debaters}", question={"question_id": qid}, format={}, debaters=list(debaters),
                       judge="j", speeches=[], p_a=p_a, p_a_orders=[p_a], winner=winner, correct_index=correct,
                       judge_correct=winner == correct)


def test_judge_metrics_by_hand():
    rs = [_round(("policy", "policy"), 0.9, 0), _round(("policy", "policy"), 0.7, 1),
          _round(("policy", "policy"), 0.2, 1), _round(("policy", "policy"), 0.6, 0)]
    m = JudgeEvaluation().metrics(rs)
    assert m["judge/accuracy"] == pytest.approx(3 / 4)
    assert m["judge/prob_correct"] == pytest.approx((0.9 + 0.3 + 0.8 + 0.6) / 4)
    # ECE of P(A) against "A correct", 10 bins: bins 0.2 (A wrong), 0.6 (A right), 0.7 (A wrong), 0.9 (A right)
    assert m["judge/ece"] == pytest.approx((0.2 + 0.4 + 0.7 + 0.1) / 4)
    assert m["judge/rounds"] == 4


def test_tournament_metrics_by_hand():
    rs = [_round(("policy", "baseline"), 0.8, 0, "q1"), _round(("baseline", "policy"), 0.3, 0, "q1"),
          _round(("policy", "baseline"), 0.4, 1, "q2"), _round(("baseline", "policy"), 0.4, 1, "q2")]
    m = TournamentValidation().metrics(rs)
    assert m["tournament/win_rate"] == pytest.approx(3 / 4)  # policy won rounds 1, 2 and 4
    assert m["tournament/p_policy"] == pytest.approx((0.8 + 0.7 + 0.4 + 0.6) / 4)
    assert m["tournament/judge_accuracy"] == pytest.approx(3 / 4)  # wrong only in round 2
    assert m["tournament/rating_diff"] > 0
    # 3 wins to 1: the Bradley-Terry gap is about ln 3 (slightly less: the L2 prior), in Elo points
    assert m["tournament/rating_diff"] == pytest.approx(400 / math.log(10) * math.log(3), rel=0.05)


def test_callbacks_log_during_training(tiny_model, tmp_path):
    pl.seed_everything(0)
    module = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False), OptimConfig(lr=1e-2))
    dm = tiny_datamodule(tiny_model, batch_size=2)
    judge_eval = JudgeEvaluation(questions=DataConfig(split="val", limit=1, both_orders=True), at_start=True)
    tournament = TournamentValidation(questions=DataConfig(split="val", limit=1, both_orders=False),
                                      every_n_epochs=2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         callbacks=[judge_eval, tournament], log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False)
    tok = module.tokenizer
    probe = ([prompt_ids(tok, PROMPT)], [completion_ids(tok, "the key was under the mat")])
    before = live_generator(module.policy, tok, "probe").score_ids(*probe)[0]
    trainer.fit(module, dm)

    assert [h["epoch"] for h in judge_eval.history] == [0, 0, 1]  # at start, then after each epoch
    assert [h["judge/rounds"] for h in judge_eval.history] == [2, 2, 2]
    assert [h["epoch"] for h in tournament.history] == [1]  # every 2nd epoch
    assert tournament.history[0]["tournament/rounds"] == 2  # one question, policy on either side
    # the baseline is the initial model: the same module with its adapters off, not a second copy
    assert tournament._baseline.model is module.policy
    assert tournament._baseline.score_ids(*probe)[0] == pytest.approx(before, abs=1e-5)
    assert live_generator(module.policy, tok, "probe").score_ids(*probe)[0] != pytest.approx(before, abs=1e-5)
    rows = read_metrics(trainer.log_dir)
    for key in ("judge/accuracy", "judge/prob_correct", "judge/ece", "tournament/win_rate",
                "tournament/rating_diff", "tournament/judge_accuracy", "tournament/p_policy"):
        assert logged(rows, key), key
    assert len(logged(rows, "judge/accuracy")) == 3


def test_tournament_needs_two_sides():
    with pytest.raises(ValueError, match="two-sided"):
        TournamentValidation(format=Format(kind="consultancy"))


def _write_probe(directory, model: str, hidden: int, num_layers: int, prompt_sets=("debate",)):
    from probe_files import write_probe

    return write_probe(directory, model, hidden, num_layers, layers=(-1,), prompt_sets=prompt_sets)


def test_judge_evaluation_with_a_probe_judges_by_the_probe(tiny_model, tmp_path):
    import types

    import torch

    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.transcript import Speech, Transcript
    from debate_lightning.models.probe import LinearProbe, ProbeJudgeGenerator
    from debate_lightning.models.registry import ModelSpec

    spec = ModelSpec(path=tiny_model, dtype="float32")
    probe_dir = _write_probe(tmp_path / "probe", tiny_model, hidden=32, num_layers=2)
    fmt = Format(kind="debate", num_speeches=1)
    cb = JudgeEvaluation(format=fmt, judge=spec, judge_probe=str(probe_dir))
    trainer = types.SimpleNamespace(datamodule=None)
    judge = cb.judge(trainer, None)
    assert isinstance(judge.generator, ProbeJudgeGenerator) and "+probe" in judge.name
    q = DataConfig(split="val", limit=1, both_orders=False).load()[0]
    tr = Transcript(q, fmt)
    tr.speeches += [Speech(0, 0, "It is A."), Speech(1, 1, "It is B.")]
    probe, gen = LinearProbe.load(probe_dir), judge.generator.generator
    chats = [tr.judge_chat(prompts_for(fmt), swap=s) for s in (False, True)]
    p = probe.p_a(gen.hidden_states([gen.chat_ids(c) for c in chats], probe.layers))
    want = (float(p[0]) + (1.0 - float(p[1]))) / 2  # both orders, as the LLM judge averages them
    assert judge.p_a([tr])[0] == pytest.approx(want, abs=1e-5)
    # a probe made on other prompts is refused, naming them
    other = _write_probe(tmp_path / "other", tiny_model, hidden=32, num_layers=2, prompt_sets=("consultancy",))
    with pytest.raises(ValueError, match="consultancy|debate"):
        JudgeEvaluation(format=fmt, judge=spec, judge_probe=str(other)).judge(trainer, None)
    assert torch.isfinite(p).all()
