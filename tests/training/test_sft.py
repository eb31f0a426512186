"""SFT: rows from tournament results and human debates, completion-only loss, a short fit."""

from __future__ import annotations

import json
from dataclasses import asdict

import lightning as L
import pytest
import torch

from debate_lightning.data.question import DataError
from debate_lightning.data.synthetic import generate
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Speech
from debate_lightning.training.datamodules import SFTDataModule, sft_rows_from_human_debates, sft_rows_from_results
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig
from debate_lightning.training.sft import SFTModule


def _round(q, status="ok", winner=0) -> dict:
    speeches = [Speech(side=0, step=0, text=f"A says {q.positions[0]}."),
                Speech(side=1, step=1, text=f"B says {q.positions[1]}."),
                Speech(side=0, step=2, text="A again.")]
    return {"round_id": "r" + q.uid, "question": q.to_dict(), "format": asdict(Format(num_speeches=2)),
            "debaters": ["x", "y"], "judge": "j", "speeches": [s.to_dict() for s in speeches], "p_a": 0.8,
            "p_a_orders": [0.8], "winner": winner, "correct_index": q.correct_index, "judge_correct": True,
            "status": status}


@pytest.fixture
def results_dir(tmp_path):
    qs = generate(2)
    d = tmp_path / "tournament"
    d.mkdir()
    with open(d / "rounds.jsonl", "w") as f:
        f.write(json.dumps(_round(qs[0])) + "\n")
        f.write(json.dumps(_round(qs[1], status="failed")) + "\n")
        f.write(json.dumps(_round(qs[2], winner=1)) + "\n")
    (d / "preferences.jsonl").write_text('{"prompt": [], "chosen": "x"}\n')  # not rounds: skipped
    return d


def test_rows_from_results(results_dir):
    rows = sft_rows_from_results([str(results_dir)])
    assert len(rows) == 6  # two ok rounds x three speeches; the failed round is skipped
    chat, text = rows[1]
    assert text.startswith("B says") and "A says" in chat[-1]["content"] + chat[0]["content"]
    assert "A says" not in " ".join(m["content"] for m in rows[0][0])  # the first speaker saw nothing yet
    winners = sft_rows_from_results([str(results_dir)], select="winner")
    assert [t for _, t in winners] == ["A says " + rows[0][1][7:], "A again.", rows[4][1]]


def test_bad_results_line_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round_id": "x"}\n')
    with pytest.raises(DataError, match=r"r.jsonl line 1"):
        sft_rows_from_results([str(path)])


def test_rows_from_human_debates(tmp_path):
    record = {"storyTitle": "T", "story": "Ann found the key.", "question": "Who found the key?",
              "answers": ["Ann", "Bob"], "debateId": "d1", "correctAnswer": 0, "isJudgeCorrect": True,
              "turns": [{"role": "Debater", "index": 0, "text": "Ann did."},
                        {"role": "Debater", "index": 1, "text": "Bob did."},
                        {"role": "Judge", "text": "hmm", "probabilities": [0.7, 0.3]}]}
    path = tmp_path / "debates.jsonl"
    path.write_text(json.dumps(record) + "\n")
    rows = sft_rows_from_human_debates(str(path))
    assert [t for _, t in rows] == ["Ann did.", "Bob did."]
    assert "Ann did." in rows[1][0][-1]["content"]
    assert [t for _, t in sft_rows_from_human_debates(str(path), select="correct")] == ["Ann did."]


def test_sft_fit_moves_loss_and_masks_prompt(tiny_model, results_dir, tmp_path):
    L.seed_everything(0)
    module = SFTModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)), OptimConfig(lr=1e-2))
    dm = SFTDataModule(results=[str(results_dir)], batch_size=3, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, default_root_dir=tmp_path, enable_progress_bar=False,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version="v"), log_every_n_steps=1,
                        enable_checkpointing=False)
    trainer.fit(module, dm)
    batch = dm.collate(dm.train_items[:2])
    packed = batch["packed"]
    # only the speech (and its end-of-turn token) is scored
    n_speech = [len(i["completion"]) for i in dm.train_items[:2]]
    assert packed.completion_mask[:, 0].sum(-1).tolist() == n_speech
    assert dm.train_items[0]["completion"][-1] == module.tokenizer.eos_token_id
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "v" / "metrics.csv")) if r.get("loss")]
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 4 and losses[-1] < losses[0] and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "v" / "adapter" / "adapter_model.safetensors").is_file()
