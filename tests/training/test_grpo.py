"""GRPO on debates: groups and advantages from a rollout, final rewards from continued rounds,
learning toward a planted speech on the tiny model, TRL's metric names, and bad options."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from debate_lightning.data.loading import load_questions
from debate_lightning.debate.agents import Judge
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import SamplingParams
from debate_lightning.models.hf import live_generator
from debate_lightning.training.online.debater import play_rollout
from debate_lightning.training.online.grpo import GRPOModule
from debate_lightning.training.online.records import Candidate, Rollout, SpeechSample, candidate_groups
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, completion_logps, pack

from .test_online_dpo import logged, read_metrics, tiny_datamodule
from .test_rollouts import _result

TRL_GRPO_METRICS = ("loss", "reward", "reward_std", "frac_reward_zero_std", "clip_ratio/low_mean",
                    "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length",
                    "completions/clipped_ratio", "kl")


# -- groups and advantages from a hand-built rollout ---------------------------------------------
def _rollout() -> Rollout:
    c = lambda ids, score, finished=True: Candidate(ids, "t", finished, score)  # noqa: E731
    samples = [
        # round 0 (correct answer: side 1), side 0's opening: the third member got no verdict
        SpeechSample(0, 0, 0, 1, [1, 2], [c([3, 2], 0.6), c([4, 2], 0.2), c([5, 2], None)]),
        # round 0, side 1's reply: a tie
        SpeechSample(0, 1, 1, 1, [1, 3], [c([6, 2], 0.5), c([7, 2], 0.5)]),
        # round 1 (correct answer: side 0), side 0: an empty member is left out too
        SpeechSample(1, 0, 0, 1, [1, 4], [c([8, 2], 0.3), c([9], 0.9, finished=False), c([], 0.7)]),
    ]
    return Rollout(epoch=0, results=[_result(0.75, correct=1), _result(0.4, correct=0)], samples=samples)


def test_groups_carry_rewards_with_the_correctness_term_and_grpo_advantages():
    groups = candidate_groups(_rollout(), "grpo", role_conditioned=True, correctness_weight=0.1)
    assert [g["prompt_ids"] for g in groups] == [[1, 2], [1, 3], [1, 4]]
    assert [g["completions"] for g in groups] == [[[3, 2], [4, 2]], [[6, 2], [7, 2]], [[8, 2], [9]]]
    rewards = [r for g in groups for r in g["rewards"]]
    assert rewards == pytest.approx([0.5, 0.1, 0.6, 0.6, 0.4, 1.0])  # side 0 is wrong in round 0, right in round 1
    assert [g["finished"] for g in groups][2] == [True, False]
    # (r - mean) / (std + 1e-4) with Bessel's std: two members at ±d have std d·√2
    a = 0.2 / (0.2 * 2**0.5 + 1e-4)
    assert groups[0]["advantages"] == pytest.approx([a, -a])
    assert groups[1]["advantages"] == [0.0, 0.0]  # a zero-variance group learns nothing
    b = 0.3 / (0.3 * 2**0.5 + 1e-4)
    assert groups[2]["advantages"] == pytest.approx([-b, b])


def test_pooled_groups_share_a_baseline_across_roles():
    # without role conditioning round 0's four members share one mean: (0.6 + 0.2 + 0.5 + 0.5) / 4 = 0.45
    groups = candidate_groups(_rollout(), "dr_grpo", role_conditioned=False)
    assert groups[0]["advantages"] == pytest.approx([0.15, -0.25])
    assert groups[1]["advantages"] == pytest.approx([0.05, 0.05])  # the tie is no longer zero
    assert groups[2]["advantages"] == pytest.approx([-0.3, 0.3])
    # RLOO: r minus the mean of the OTHER members
    rloo = candidate_groups(_rollout(), "rloo", role_conditioned=False)
    assert rloo[0]["advantages"] == pytest.approx([0.6 - 0.4, 0.2 - 1.6 / 3])
    assert candidate_groups(_rollout(), "grpo", opening_only=True, role_conditioned=True)[1]["prompt_ids"] == [1, 3]


# -- final rewards: every member's round is continued ---------------------------------------------
class RecordingJudge(Judge):
    """The real judge, remembering every transcript it was asked about."""

    def p_a_orders(self, transcripts):
        self.seen = [*getattr(self, "seen", []), *transcripts]
        return super().p_a_orders(transcripts)


def test_final_reward_continues_every_members_round(tiny_policy):
    policy, tok = tiny_policy
    gen = live_generator(policy, tok, "policy")
    judge = RecordingJudge(live_generator(policy, tok, "judge", base_only=True), both_orders=False)
    fmt = Format(kind="debate", num_speeches=2, simultaneous=False)  # A, B, A, B
    torch.manual_seed(0)
    rollout = play_rollout(load_questions("synthetic", split="train", limit=2), fmt, gen, judge,
                           SamplingParams(max_new_tokens=4, temperature=1.0), num_candidates=3, candidate_reward="final")
    assert len(rollout.samples) == 8 and all(r.ok for r in rollout.results)
    # one judge call: the 2 rounds and 2 continued branches for each of the 8 speeches, all played to the end
    assert len(judge.seen) == 2 + 8 * 2
    assert all(len(t.speeches) == 4 for t in judge.seen)
    mains = [r.transcript() for r in rollout.results]
    for s in rollout.samples:
        assert s.chosen == 0  # the round goes on with a plain sample, not the judge's favourite
        main = mains[s.round_index]
        assert s.candidates[0].score == rollout.p_side(s.round_index, s.side)
        for k, cand in enumerate(s.candidates[1:], start=1):
            branch = [t for t in judge.seen if t.question.uid == main.question.uid
                      and [x.text for x in t.speeches[: s.prefix_len]] == [x.text for x in main.speeches[: s.prefix_len]]
                      and t.speeches[s.prefix_len].text == cand.text and t.speeches[s.prefix_len].side == s.side]
            assert len(branch) == 1, (s.round_index, s.step, k)
            assert 0.0 <= cand.score <= 1.0
        # the saved round shows every member's final score
        saved = next(d for d in rollout.results[s.round_index].speeches if (d["step"], d["side"]) == (s.step, s.side))
        assert [d["score"] for d in saved["candidates"]] == [c.score for c in s.candidates]


def test_immediate_reward_scores_right_after_the_speech(tiny_policy):
    policy, tok = tiny_policy
    judge = RecordingJudge(live_generator(policy, tok, "judge", base_only=True), both_orders=False)
    torch.manual_seed(0)
    rollout = play_rollout(load_questions("synthetic", split="train", limit=1), Format(num_speeches=1),
                           live_generator(policy, tok, "policy"), judge, SamplingParams(max_new_tokens=4),
                           num_candidates=2, candidate_reward="immediate")
    # the candidates were judged on the transcript before the speech plus that speech alone
    assert [len(t.speeches) for t in judge.seen[:2]] == [1, 1]
    assert all(c.score is not None for s in rollout.samples for c in s.candidates)


# -- training ---------------------------------------------------------------------------------------
def test_grpo_moves_the_policy_toward_a_planted_higher_reward_speech(tiny_model, tmp_path):
    """Real rollouts, except that in every group one member is replaced by a planted speech with
    reward 1 while the others get 0: GRPO raises the planted speech's log-prob on those prompts."""
    pl.seed_everything(0)
    module = GRPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False),
                        OptimConfig(lr=5e-2), beta=0.04, loss_type="grpo", max_grad_norm=0)
    dm = tiny_datamodule(tiny_model, num_candidates=3, batch_size=2)
    tok = module.tokenizer
    planted = tok.encode("the key was under the mat", add_special_tokens=False) + [tok.eos_token_id]
    prompts, others = [], []  # the first epoch's prompts and, per prompt, a member that earned 0
    play = dm.play

    def planting_play(mod, epoch, *shard):
        rollout = play(mod, epoch, *shard)
        for s in rollout.samples:
            s.candidates[0].response_ids, s.candidates[0].score = planted, 1.0
            for c in s.candidates[1:]:
                c.score = 0.0
            prompts.append(s.prompt_ids)
            others.append(list(s.candidates[1].response_ids))
        return rollout

    dm.play = planting_play

    def mean_logp(completions: list[list[int]]) -> float:
        with torch.no_grad():
            packed = pack(prompts[:4], [[c] for c in completions[:4]], tok.pad_token_id)
            return float(completion_logps(module.policy, packed).sum(-1).mean())

    dm.play(module, 0)  # the prompts the first epoch will play
    before = mean_logp([planted] * 4), mean_logp(others)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dm)
    after = mean_logp([planted] * 4), mean_logp(others)
    # the planted speech rises (the 2-layer, 32-wide model moves slowly: about 1 nat in 6 steps),
    # and by more than the zero-reward members it was compared with: the margin between them grows
    rise = after[0] - before[0], after[1] - before[1]
    assert rise[0] > 0.5 and rise[0] > rise[1] + 0.5, (before, after)

    rows = read_metrics(trainer.log_dir)
    for key in (*TRL_GRPO_METRICS, "objective/scores", "rollout/judge_accuracy", "time/rollout_s"):
        assert logged(rows, key), key
    # 4 speeches per epoch = 4 groups of 3, 2 groups per step, one step each: 2 steps per epoch
    assert trainer.global_step == 6
    assert logged(rows, "reward") == pytest.approx([1 / 3] * 6)  # one member of three earns 1
    assert logged(rows, "frac_reward_zero_std") == [0.0] * 6
    assert all(v >= 0 for v in logged(rows, "kl"))  # k3 is never negative


def test_several_iterations_take_several_steps_and_clip(tiny_model, tmp_path):
    pl.seed_everything(0)
    module = GRPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False),
                        OptimConfig(lr=5e-2), num_iterations=3, epsilon=0.01, reward="immediate", advantage="rloo")
    dm = tiny_datamodule(tiny_model, num_candidates=2, batch_size=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dm)
    assert trainer.global_step == 3  # one batch of 4 groups, three optimizer steps on it
    rows = read_metrics(trainer.log_dir)
    # after the first step the ratio moves off 1 and a 1% clip catches some tokens
    assert logged(rows, "clip_ratio/region_mean")[0] > 0


def test_bad_options(tiny_model):
    for kwargs, match in (({"reward": "middle"}, "reward"), ({"advantage": "ppo"}, "advantage"),
                          ({"loss_type": "bnpo2"}, "loss_type"), ({"num_iterations": 0}, "num_iterations"),
                          ({"beta": -1.0}, "beta")):
        with pytest.raises(ValueError, match=match):
            GRPOModule(**kwargs)
    with pytest.raises(ValueError, match="num_candidates >= 2"):
        module = GRPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)))
        dm = tiny_datamodule(tiny_model, num_candidates=1)
        pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False).fit(module, dm)
