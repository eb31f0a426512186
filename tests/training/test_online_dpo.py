"""Online DPO on a tiny model: fresh rollouts from the updated policy every epoch, and learning."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from debate_lightning.models.base import SamplingParams
from debate_lightning.models.registry import ModelSpec
from debate_lightning.data.config import DataConfig
from debate_lightning.training.online.datamodule import DebateRolloutDataModule
from debate_lightning.training.online.online_dpo import OnlineDPOModule
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, completion_ids, prompt_ids

from .conftest import PROMPT


def read_metrics(log_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def probe_rollouts(dm: DebateRolloutDataModule) -> list[dict]:
    """Record, at every rollout, the rollout generator's log-prob of a fixed probe and what it played."""
    seen: list[dict] = []
    play = dm.play

    def recording_play(module, epoch, *shard):
        gen = dm.policy_generator(module)
        tok = module.tokenizer
        probe = gen.score_ids([prompt_ids(tok, PROMPT)], [completion_ids(tok, "the key was under the mat")])[0]
        rollout = play(module, epoch, *shard)
        seen.append({"epoch": epoch, "probe": probe, "live": gen.model is module.policy, "rollout": rollout,
                     "beta": getattr(module, "beta", None)})
        return rollout

    dm.play = recording_play
    return seen


def tiny_datamodule(tiny_model: str, num_candidates: int = 2, **kwargs) -> DebateRolloutDataModule:
    return DebateRolloutDataModule(questions=DataConfig(split="train", limit=8, both_orders=False),
                                   rounds_per_epoch=2, num_candidates=num_candidates,
                                   sampling=SamplingParams(max_new_tokens=4, temperature=1.0),
                                   judge=ModelSpec(path=tiny_model, dtype="float32"), judge_both_orders=False,
                                   **kwargs)


def test_online_dpo_two_epochs(tiny_model, tmp_path):
    pl.seed_everything(0)
    module = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)), OptimConfig(lr=1e-2), beta=[0.1, 0.2],
                             missing_eos_penalty=0.1)
    dm = tiny_datamodule(tiny_model, batch_size=2)
    seen = probe_rollouts(dm)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dm)

    # one rollout per epoch, played by the live (updated) policy: same probe, different log-probs
    assert [s["epoch"] for s in seen] == [0, 1]
    assert all(s["live"] for s in seen)
    assert seen[0]["probe"] != pytest.approx(seen[1]["probe"], abs=1e-6)
    assert [s["beta"] for s in seen] == [0.1, 0.2]  # β per epoch
    tokens = [[c.response_ids for s in r["rollout"].samples for c in s.candidates] for r in seen]
    assert tokens[0] != tokens[1]

    # LoRA weights moved, the base did not
    changed = {n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_" in n for n, p in module.policy.named_parameters() if p.requires_grad)

    rows = read_metrics(trainer.log_dir)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "beta", "grad_norm", "objective/scores",
                "objective/scores_margin", "val/contain_eos_token", "rollout/judge_accuracy",
                "rollout/examples", "time/rollout_s", "time/train_s"):
        assert logged(rows, key), key
    assert logged(rows, "time/rollout_s")[0] > 0 and logged(rows, "time/train_s")[0] > 0
    assert len(logged(rows, "rollout/judge_accuracy")) == 2  # once per epoch
    assert sorted(set(logged(rows, "beta"))) == pytest.approx([0.1, 0.2])
    assert (Path(trainer.log_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_consultancy_rollouts_train(tiny_model, tmp_path):
    from debate_lightning.debate.formats import Format

    pl.seed_everything(0)
    module = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False),
                             OptimConfig(lr=1e-2), opening_only=True)
    dm = tiny_datamodule(tiny_model, batch_size=2, format=Format(kind="consultancy", num_speeches=2))
    seen = probe_rollouts(dm)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    rollout = seen[0]["rollout"]
    # one speaker per round, two speeches each; opening_only keeps the first speech's pair only
    assert sorted((s.round_index, s.speech_number) for s in rollout.samples) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(len(r.speeches) == 2 and len({s["side"] for s in r.speeches}) == 1 for r in rollout.results)
    assert len(module.rollout_examples(rollout)) <= 2
    assert trainer.global_step >= 1


def test_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        OnlineDPOModule(beta=[])  # checked before any model is loaded
    with pytest.raises(ValueError, match="beta"):
        OnlineDPOModule(beta=[0.1, -1.0])


def test_online_objectives_have_no_decay_schedule():
    # a rollout run has no known length; checked before any model is loaded
    with pytest.raises(ValueError, match="optim.scheduler"):
        OnlineDPOModule(optim=OptimConfig(scheduler="cosine"))


def test_needs_two_candidates(tiny_model):
    module = OnlineDPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8), save_adapter=False))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="num_candidates >= 2"):
        trainer.fit(module, tiny_datamodule(tiny_model, num_candidates=1))
