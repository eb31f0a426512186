"""DebateRolloutDataModule: rollouts with the live policy, examples, seeding and exact resume."""

from __future__ import annotations


import lightning.pytorch as pl
import pytest
import torch

from debate_lightning.data.loading import load_questions
from debate_lightning.debate.agents import Judge
from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import SamplingParams
from debate_lightning.models.registry import ModelSpec
from debate_lightning.data.config import DataConfig
from debate_lightning.models.hf import live_generator
from debate_lightning.training.online.datamodule import DebateRolloutDataModule
from debate_lightning.training.online.debater import play_rollout
from debate_lightning.training.online.grpo import GRPOModule
from debate_lightning.training.online.online_dpo import OnlineDPOModule
from debate_lightning.training.online.records import Candidate, Rollout, SpeechSample, preference_pairs, trajectories
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, prompt_ids

TINY_SAMPLING = SamplingParams(max_new_tokens=4, temperature=1.0)


# -- examples from hand-built rollouts ---------------------------------------------------------
def _result(p_a: float | None, correct: int) -> RoundResult:
    return RoundResult(round_id="r", question={}, format={}, debaters=["policy", "policy"], judge="j", speeches=[],
                       p_a=p_a, p_a_orders=[] if p_a is None else [p_a], winner=None if p_a is None else int(p_a < .5),
                       correct_index=correct, judge_correct=None if p_a is None else int(p_a < .5) == correct)


def _rollout() -> Rollout:
    c = lambda ids, score, finished=True: Candidate(ids, "t", finished, score)  # noqa: E731
    samples = [
        # round 0, side 0 opening: the unfinished candidate scores best but pays the EOS penalty
        SpeechSample(0, 0, 0, 1, [1, 2], [c([3, 2], 0.6), c([4, 4, 4], 0.7, finished=False), c([5, 2], 0.2)], 1),
        SpeechSample(0, 1, 1, 1, [1, 3], [c([6, 2], 0.5), c([7, 2], 0.5)], 0),  # a tie: no pair
        SpeechSample(0, 0, 2, 2, [1, 4], [c([8, 2], 0.9), c([9, 2], 0.1)], 0),  # a second speech
        SpeechSample(1, 0, 0, 1, [1, 5], [c([10, 2], None)], 0),  # round without a verdict
    ]
    return Rollout(epoch=0, results=[_result(0.75, correct=1), _result(None, correct=0)], samples=samples)


def test_preference_pairs_best_against_worst():
    pairs = preference_pairs(_rollout())
    assert [(p["chosen_ids"], p["rejected_ids"]) for p in pairs] == [([4, 4, 4], [5, 2]), ([8, 2], [9, 2])]
    assert pairs[0]["preference"] == pytest.approx(0.5 * (1 + 0.7 - 0.2))
    assert pairs[0]["prompt_ids"] == [1, 2]


def test_missing_eos_penalty_and_opening_only():
    pairs = preference_pairs(_rollout(), missing_eos_penalty=0.5, opening_only=True)
    # 0.7 − 0.5 = 0.2 now ties the worst: the finished 0.6 wins, the penalised one loses
    assert [(p["chosen_ids"], p["rejected_ids"]) for p in pairs] == [([3, 2], [4, 4, 4])]
    assert pairs[0]["rejected_score"] == pytest.approx(0.2)
    assert [p["chosen_ids"] for p in preference_pairs(_rollout(), min_margin=0.75)] == [[8, 2]]


def test_trajectories_rewards():
    r = _rollout()
    trajs = trajectories(r, baseline="none")
    # round 1 has no verdict; round 0: P(A) = 0.75, so side 0 scores 0.75 and side 1 0.25
    assert [(t["response_ids"], t["score"]) for t in trajs] == [([4, 4, 4], 0.75), ([6, 2], 0.25), ([8, 2], 0.75)]
    assert [t["reward"] for t in trajectories(r, baseline="constant")] == pytest.approx([0.25, -0.25, 0.25])
    assert [t["reward"] for t in trajectories(r, baseline="batch_mean")] == pytest.approx(
        [0.75 - 7 / 12, 0.25 - 7 / 12, 0.75 - 7 / 12])
    # B (side 1) is correct: +w for side 1's speech, −w for side 0's
    shaped = trajectories(r, baseline="none", correctness_weight=0.1)
    assert [t["reward"] for t in shaped] == pytest.approx([0.65, 0.35, 0.65])
    assert len(trajectories(r, opening_only=True)) == 2
    with pytest.raises(ValueError, match="baseline"):
        trajectories(r, baseline="median")


# -- rollouts with a tiny model -------------------------------------------------------------------
def test_play_rollout_records_what_the_policy_sampled(tiny_model, tiny_policy):
    policy, tok = tiny_policy
    gen = live_generator(policy, tok, "policy")
    judge = Judge(live_generator(policy, tok, "judge", base_only=True), both_orders=False)
    questions = load_questions("synthetic", split="train", limit=2)
    torch.manual_seed(0)
    rollout = play_rollout(questions, Format(num_speeches=1), gen, judge, TINY_SAMPLING, num_candidates=3)
    assert len(rollout.results) == 2 and all(r.ok for r in rollout.results)
    assert [(s.round_index, s.side, s.speech_number) for s in rollout.samples] == [(0, 0, 1), (1, 0, 1), (0, 1, 1),
                                                                                   (1, 1, 1)]
    for s in rollout.samples:
        assert len(s.candidates) == 3
        assert all(0.0 <= c.score <= 1.0 for c in s.candidates)
        assert s.candidates[s.chosen].score == max(c.score for c in s.candidates)
        for c in s.candidates:
            assert len(c.response_ids) == 4 + c.finished  # the sampled tokens, then EOS if it ended
            assert c.response_ids[-1] == tok.eos_token_id or not c.finished
    # the prompt is the chat the debater saw, tokenised as training tokenises it
    tr = rollout.results[0].transcript()
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.transcript import Transcript

    chat = Transcript(tr.question, tr.format).debater_chat(0, prompts_for(tr.format))
    assert rollout.samples[0].prompt_ids == prompt_ids(tok, chat)
    assert policy.training  # eval_mode gave the training mode back


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    dm = DebateRolloutDataModule(questions=DataConfig(split="train", limit=20, both_orders=False),
                                 format=Format(kind="consultancy", num_speeches=1), rounds_per_epoch=6, seed=3)
    q0, f0, s0 = dm.epoch_plan(0)
    assert (q0, f0, s0) == dm.epoch_plan(0)
    q1, _, s1 = dm.epoch_plan(1)
    assert [q.uid for q in q0] != [q.uid for q in q1] and s0 != s1
    assert {f.consultant_side for f in f0} == {0, 1}  # consultants argue for both sides
    other = DebateRolloutDataModule(questions=DataConfig(split="train", limit=20, both_orders=False), seed=4)
    assert [q.uid for q in other.epoch_plan(0)[0]] != [q.uid for q in q0]


def test_state_dict_round_trip_and_bad_options():
    dm = DebateRolloutDataModule(seed=7)
    dm.epoch = 3
    fresh = DebateRolloutDataModule(seed=7)
    fresh.load_state_dict(dm.state_dict())
    assert fresh.state_dict() == {"seed": 7, "epoch": 3}
    with pytest.warns(UserWarning, match="seed"):
        DebateRolloutDataModule(seed=1).load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="stop"):
        DebateRolloutDataModule(sampling=SamplingParams(stop=["\n"]))
    with pytest.raises(ValueError, match="rounds_per_epoch"):
        DebateRolloutDataModule(rounds_per_epoch=0)


def _fit(tiny_model, tmp_path, max_epochs, ckpt_path=None, objective="online_dpo"):
    pl.seed_everything(0)
    policy = PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False)
    module = (OnlineDPOModule(policy, OptimConfig(lr=1e-2)) if objective == "online_dpo" else
              GRPOModule(policy, OptimConfig(lr=1e-2), reward="final"))
    dm = DebateRolloutDataModule(questions=DataConfig(split="train", limit=8, both_orders=False),
                                 rounds_per_epoch=2, num_candidates=2, sampling=TINY_SAMPLING,
                                 judge=ModelSpec(path=tiny_model, dtype="float32"), judge_both_orders=False,
                                 batch_size=2, seed=5)
    played = []
    play = dm.play

    def recording_play(mod, epoch, *shard):
        played.append((dm.epoch, epoch, r := play(mod, epoch, *shard)))
        return r

    dm.play = recording_play
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, callbacks=[ckpt],
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         default_root_dir=tmp_path)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return played, dm


@pytest.mark.parametrize("objective", ["online_dpo", "grpo"])
def test_resume_replays_the_same_rollouts(tiny_model, tmp_path, objective):
    full, _ = _fit(tiny_model, tmp_path / "full", 2, objective=objective)
    first, _ = _fit(tiny_model, tmp_path / "part", 1, objective=objective)
    resumed, dm = _fit(tiny_model, tmp_path / "resumed", 2, ckpt_path=str(tmp_path / "part" / "ckpt" / "last.ckpt"),
                       objective=objective)
    assert [(e, ep) for e, ep, _ in full] == [(0, 0), (1, 1)]
    assert [(e, ep) for e, ep, _ in resumed] == [(1, 1)]  # state restored: epoch 1 is next
    assert dm.state_dict() == {"seed": 5, "epoch": 2}

    def tokens(rollout):
        return [[c.response_ids for c in s.candidates] for s in rollout.samples]

    assert tokens(first[0][2]) == tokens(full[0][2])
    assert tokens(resumed[0][2]) == tokens(full[1][2])  # same weights, same RNG: the same debates
    assert tokens(full[0][2]) != tokens(full[1][2])


def test_any_generator_can_judge(tiny_model, tmp_path):
    # an API-style judge (here a scripted one) instead of a local model; examples still come out
    from debate_lightning.models.scripted import RandomGenerator
    module = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False))
    dm = DebateRolloutDataModule(questions=DataConfig(split="train", limit=4, both_orders=False),
                                 rounds_per_epoch=2, num_candidates=2, sampling=TINY_SAMPLING,
                                 judge_generator=RandomGenerator(seed=1), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert dm.last_rollout is not None and dm.last_rollout.results[0].judge == "judge"
    assert len(dm.last_examples) == 4  # random scores never tie: one pair per speech
    assert dm.state_dict() == {"seed": 0, "epoch": 1}


def test_an_epoch_is_shuffled_with_each_rounds_examples_together():
    import random

    from debate_lightning.training.online.datamodule import shuffle_rounds

    examples = [{"round": r, "i": i} for i in range(3) for r in range(5)]  # the rollout's order: interleaved
    orders = [shuffle_rounds(list(examples), random.Random(seed)) for seed in range(4)]
    for order in orders:
        assert sorted(e["i"] + 10 * e["round"] for e in order) == sorted(e["i"] + 10 * e["round"] for e in examples)
        rounds = [e["round"] for e in order]
        assert all(rounds[k:k + 3] == [rounds[k]] * 3 for k in range(0, 15, 3)), rounds  # contiguous rounds
    assert len({tuple((e["round"], e["i"]) for e in o) for o in orders}) == 4  # and shuffled, by the seed
