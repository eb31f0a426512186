"""Rollouts on N processes: disjoint shards of one plan, equal batch counts, totals over ranks,
and a real 2-process DDP online-DPO run (gloo on CPU) that ends with identical replicas and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from debate_lightning.data.config import DataConfig
from debate_lightning.debate.formats import Format
from debate_lightning.training.online.datamodule import DebateRolloutDataModule
from debate_lightning.training.online.records import Candidate, Rollout, SpeechSample, stats_from_totals

from .test_rollouts import _result

ROOT = Path(__file__).resolve().parents[2]


def _dm(**kwargs) -> DebateRolloutDataModule:
    return DebateRolloutDataModule(questions=DataConfig(split="train", limit=20, both_orders=False),
                                   format=Format(kind="consultancy", num_speeches=1), **kwargs)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_the_plan_each_round_once(world):
    dm = _dm(rounds_per_epoch=7, seed=3)
    for epoch in (0, 1):
        questions, fmts, seed = dm.epoch_plan(epoch)
        plan = [(q.uid, q.correct_index, f.consultant_side) for q, f in zip(questions, fmts)]
        shards = [dm.shard(epoch, rank, world) for rank in range(world)]
        assert [s[2] for s in shards] == [seed + rank for rank in range(world)]  # rank 0 keeps the plan's seed
        played = {rank: [(q.uid, q.correct_index, f.consultant_side) for q, f in zip(s[0], s[1])]
                  for rank, s in enumerate(shards)}
        assert sorted(r for rows in played.values() for r in rows) == sorted(plan)  # together: the plan, once
        assert all(played[rank] == plan[rank::world] for rank in range(world))
        assert max(map(len, played.values())) - min(map(len, played.values())) <= 1


def test_totals_over_shards_are_the_whole_rollouts_stats():
    c = lambda ids, score, finished=True: Candidate(ids, "t", finished, score)  # noqa: E731
    first = Rollout(0, [_result(0.75, correct=1), _result(None, correct=0)],
                    [SpeechSample(0, 0, 0, 1, [1], [c([3, 2], 0.6), c([4, 4, 4], 0.7, finished=False)], 1)])
    second = Rollout(0, [_result(0.2, correct=1)], [SpeechSample(0, 0, 0, 1, [1], [c([5], 0.9), c([6, 2], 0.1)], 0)])
    whole = Rollout(0, first.results + second.results, first.samples + second.samples)
    added = {k: tuple(a + b for a, b in zip(first.totals()[k], second.totals()[k])) for k in whole.totals()}
    expected = {k: v for k, v in whole.stats().items() if k != "rollout/seconds"}
    assert stats_from_totals(added) == pytest.approx(expected)
    assert expected["rollout/rounds"] == 3 and expected["rollout/judge_accuracy"] == pytest.approx(0.5)
    assert expected["val/contain_eos_token"] == pytest.approx(0.75)
    # not the mean of the shards' means: first has one judged round, second one too, but 2 vs 2 candidates
    assert expected["rollout/response_tokens"] == pytest.approx((2 + 3 + 1 + 2) / 4)


class _Strategy:
    """Stands in for the strategy's all_gather: the counts the other ranks would report."""

    def __init__(self, counts: list[int]):
        self.counts, self.root_device = counts, torch.device("cpu")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.counts).reshape(len(self.counts), *tensor.shape)


def test_ranks_pad_to_the_same_number_of_batches():
    dm = _dm(batch_size=4)
    dm.trainer = SimpleNamespace(world_size=2, strategy=_Strategy([3, 9]))
    padded = dm._equal_batches([{"i": i} for i in range(3)], epoch=0)
    assert [e["i"] for e in padded] == [0, 1, 2] * 4  # 3 batches of 4, as the rank with 9 examples has
    dm.trainer = SimpleNamespace(world_size=2, strategy=_Strategy([3, 0]))
    with pytest.warns(UserWarning, match=r"no training examples on rank\(s\) \[1\].*step together"):
        assert dm._equal_batches([{"i": i} for i in range(3)], epoch=0) == []


def test_fewer_rounds_than_processes_is_an_error(tmp_path):
    dm = _dm(rounds_per_epoch=1)
    dm.trainer = SimpleNamespace(lightning_module=object(), global_rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rounds_per_epoch \(1\) is less than the number of processes \(2\)"):
        dm.next_examples()


def _fit(tiny_model: str, root: Path, epochs: int, *extra: str, config: str = "online_dpo.yaml") -> None:
    callbacks = root.parent / "callbacks.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                         "      init_args: {save_last: true}\n"
                         "    - class_path: debate_lightning.training.callbacks.JudgeEvaluation\n"
                         "      init_args: {questions: {split: val, limit: 3, both_orders: true}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "debate_lightning", "fit", "--config", str(ROOT / "configs" / config),
           "--config", str(callbacks), f"--model.init_args.policy.model={tiny_model}",
           "--model.init_args.optim.lr=1e-2", f"--data.init_args.judge.path={tiny_model}",
           "--data.init_args.judge_from_policy=auto", "--data.init_args.rounds_per_epoch=4",
           "--data.init_args.questions.limit=8", "--data.init_args.sampling.max_new_tokens=4",
           "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
           f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
           *extra]
    proc = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rounds(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.multiprocess
def test_online_dpo_on_two_processes(tiny_model, tmp_path):
    """2 gloo ranks: each plays its shard of every epoch's plan, the metrics are totals over both
    (rollouts and the judge evaluation callback), the replicas end identical, and a run resumed at
    the epoch boundary plays what the whole run played."""
    from debate_lightning.debate.engine import RoundSpec

    whole = tmp_path / "whole"
    _fit(tiny_model, whole, 2)
    run = whole / "online_dpo" / "version_0"
    dm = DebateRolloutDataModule(questions=DataConfig(split="train", limit=8, both_orders=False),
                                 format=Format(kind="debate", num_speeches=1, simultaneous=True, word_limit=40),
                                 rounds_per_epoch=4)
    for epoch in (0, 1):
        questions, fmts, _ = dm.epoch_plan(epoch)
        expected = {RoundSpec(q, f, ("policy", "policy"), repeat=epoch).round_id for q, f in zip(questions, fmts)}
        ranks = [{r["round_id"] for r in _rounds(run / "rollouts" / f"epoch-{epoch:04d}-rank-{rank}.jsonl")}
                 for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 2 and not ranks[0] & ranks[1]
        assert ranks[0] | ranks[1] == expected
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    rounds = [row.split(",")[header.index("rollout/rounds")] for row in metrics[1:]]
    assert [float(r) for r in rounds if r] == [4.0, 4.0]  # both ranks' rounds, every epoch
    # the judge evaluation's 6 rounds are shared out (3 + 3) and counted once, on every rank
    judged = [row.split(",")[header.index("judge/rounds")] for row in metrics[1:]]
    assert [float(r) for r in judged if r] == [6.0, 6.0]
    fingerprints = json.loads((run / "replica_fingerprints.json").read_text())
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]

    resumed = tmp_path / "resumed"
    _fit(tiny_model, resumed, 1)
    _fit(tiny_model, resumed, 2, "--ckpt_path=last")
    again = resumed / "online_dpo" / "version_1" / "rollouts"
    assert not (again / "epoch-0000-rank-0.jsonl").exists()  # epoch 0 is not played again
    for rank in (0, 1):
        name = f"epoch-0001-rank-{rank}.jsonl"
        texts = [[(r["round_id"], s["text"]) for r in _rounds(d / name) for s in r["speeches"]]
                 for d in (again, run / "rollouts")]
        assert texts[0] == texts[1] and texts[0]


def test_judge_from_policy_auto_only_when_the_judge_is_the_policys_model(tiny_model):
    from debate_lightning.models.registry import ModelSpec
    from debate_lightning.training.online.online_dpo import OnlineDPOModule
    from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig

    lora = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)), OptimConfig())
    same = ModelSpec(path=tiny_model, dtype="float32")
    assert _dm(judge=same, judge_from_policy="auto").judges_from_policy(lora)
    assert not _dm(judge=ModelSpec(path="embedded", dtype="float32"), judge_from_policy="auto").judges_from_policy(lora)
    assert not _dm(judge=ModelSpec(path=tiny_model, dtype="bfloat16"), judge_from_policy="auto").judges_from_policy(lora)
    assert not _dm(judge=same, judge_from_policy=False).judges_from_policy(lora)
    full = OnlineDPOModule(PolicyConfig(tiny_model, None), OptimConfig(), reference="copy")  # no adapters to switch off
    assert not _dm(judge=same, judge_from_policy="auto").judges_from_policy(full)
    assert _dm(judge=same, judge_from_policy=True).judges_from_policy(full)  # asked for: a frozen copy


@pytest.mark.multiprocess
def test_ppo_on_two_processes(tiny_model, tmp_path):
    _fit(tiny_model, tmp_path / "ppo", 1, config="ppo.yaml")
    run = tmp_path / "ppo" / "ppo" / "version_0"
    ranks = [_rounds(run / "rollouts" / f"epoch-0000-rank-{rank}.jsonl") for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert not {r["round_id"] for r in ranks[0]} & {r["round_id"] for r in ranks[1]}
    fingerprints = json.loads((run / "replica_fingerprints.json").read_text())
    assert fingerprints[0] == fingerprints[1]


@pytest.mark.multiprocess
def test_grpo_on_two_processes(tiny_model, tmp_path):
    """GRPO with ``reward: final``: each rank continues its own rounds' group members and scores
    them, and the replicas end identical."""
    _fit(tiny_model, tmp_path / "grpo", 1, config="grpo.yaml")
    run = tmp_path / "grpo" / "grpo" / "version_0"
    ranks = [_rounds(run / "rollouts" / f"epoch-0000-rank-{rank}.jsonl") for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert not {r["round_id"] for r in ranks[0]} & {r["round_id"] for r in ranks[1]}
    scores = [c["score"] for rounds in ranks for r in rounds for s in r["speeches"] for c in s["candidates"]]
    assert len(scores) == 2 * 2 * 2 * 4 and all(s is not None for s in scores)  # every member of every group
    fingerprints = json.loads((run / "replica_fingerprints.json").read_text())
    assert fingerprints[0] == fingerprints[1]
