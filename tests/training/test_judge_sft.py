"""Judge SFT: rows are the exact judge chat in both orders with the correct letter as the only
scored token, and the adapter it trains judges a tournament (and judges differently from the base)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import lightning as L
import pytest
import torch
import yaml

from debate_lightning.data.synthetic import generate
from debate_lightning.debate.agents import prompts_for
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Speech
from debate_lightning.models.chat import chat_ids
from debate_lightning.models.hf import HFGenerator
from debate_lightning.tournament.cli import tournament_main
from debate_lightning.tournament.results import ResultsFile
from debate_lightning.training.datamodules import SFTDataModule, judge_rows_from_human_debates, ok_transcripts
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, completion_logps
from debate_lightning.training.sft import SFTModule


def _round(q, speeches, status="ok") -> dict:
    return {"round_id": "r" + q.uid, "question": q.to_dict(), "format": asdict(Format(num_speeches=1)),
            "debaters": ["x", "y"], "judge": "j", "speeches": [s.to_dict() for s in speeches], "p_a": 0.5,
            "p_a_orders": [0.5, 0.5], "winner": 0, "correct_index": q.correct_index, "judge_correct": None,
            "status": status}


@pytest.fixture
def rounds_dir(tmp_path):
    """Two ok rounds (correct answers A and B) and a failed one (skipped)."""
    qs = generate(3)
    qs = [next(q for q in qs if q.correct_index == 0), next(q for q in qs if q.correct_index == 1), qs[2]]
    d = tmp_path / "t"
    d.mkdir()
    with open(d / "rounds.jsonl", "w") as f:
        for i, q in enumerate(qs):
            speeches = [Speech(side=0, step=0, text=f"Say {q.positions[0]}: <quote>{q.story[:40]}</quote>"),
                        Speech(side=1, step=1, text=f"Say {q.positions[1]}.")]
            f.write(json.dumps(_round(q, speeches, "ok" if i < 2 else "failed")) + "\n")
    return d, qs[:2]


def test_judge_sft_masks_everything_but_the_answer(rounds_dir, tiny_model):
    directory, questions = rounds_dir
    dm = SFTDataModule(results=[str(directory)], target="judge_verdict", tokenizer=tiny_model, shuffle=False,
                       max_prompt_length=4096)
    dm.setup("fit")
    tok = dm._get_tokenizer()
    letter = {c: tok.encode(c, add_special_tokens=False) for c in "AB"}
    assert all(len(ids) == 1 for ids in letter.values())
    transcripts = [t for _, t in ok_transcripts([str(directory)])]
    assert len(dm.train_items) == 4  # two ok rounds x two presentation orders; the failed round is skipped
    for r, t in enumerate(transcripts):
        for swap in (False, True):
            item = dm.train_items[2 * r + int(swap)]
            # the prompt is token for token the chat the LLM judge scores, in that order
            assert item["prompt"] == chat_ids(tok, t.judge_chat(prompts_for(t.format), swap=swap))
            # the target is the correct answer's letter as presented: no EOS, nothing else
            assert item["completion"] == letter["AB"[t.question.correct_index ^ int(swap)]]
    targets = [i["completion"][0] for i in dm.train_items]
    assert sorted(targets) == sorted(letter["A"] * 2 + letter["B"] * 2)  # no position prior to learn

    packed = dm.collate(dm.train_items)["packed"]
    mask = packed.completion_mask[:, 0]
    assert mask.sum(-1).tolist() == [1, 1, 1, 1]  # one scored token per row
    for b, item in enumerate(dm.train_items):
        n = len(item["prompt"])
        assert packed.targets[b, 0, 0].item() == item["completion"][0]
        assert packed.predict_at[b, 0, 0].item() == n - 1  # predicted where the judge reads its verdict
        assert packed.input_ids[b, :n].tolist() == item["prompt"] and packed.input_ids[b, n].item() == item["completion"][0]
        assert packed.row_lengths[b].item() == n + 1  # the letter is the last real token

    # the loss is exactly the judge's log-prob of the correct letter (both with fresh LoRA = base)
    module = SFTModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)))
    module.policy.eval()
    with torch.no_grad():
        logps = completion_logps(module.policy, packed)[:, 0, 0]
    gen = HFGenerator(path=tiny_model, dtype="float32", name="tiny", max_batch_size=4)
    chats = [t.judge_chat(prompts_for(t.format), swap=s) for t in transcripts for s in (False, True)]
    judged = gen.choice_logprobs(chats, ["A", "B"])
    want = [lp["AB".index(tok.decode(i["completion"]))] for lp, i in zip(judged, dm.train_items)]
    assert logps.tolist() == pytest.approx(want, abs=1e-4)


def test_judge_rows_from_human_debates_skip_unknown_and_repeated_sessions(tmp_path):
    record = {"storyTitle": "T", "story": "Ann found the key under the mat.", "question": "Who found the key?",
              "answers": ["Ann", "Bob"], "debateId": "d1", "correctAnswer": 0, "isJudgeCorrect": True,
              "turns": [{"role": "Debater", "index": 0, "text": "<quote>Ann found the key</quote>"},
                        {"role": "Debater", "index": 1, "text": "<quote>Bob found it</quote>"},
                        {"role": "Judge", "text": "hmm", "probabilities": [0.7, 0.3]}]}
    unknown = {**record, "debateId": "d2", "question": "Where?", "correctAnswer": None, "isJudgeCorrect": None,
               "turns": record["turns"][:2]}
    path = tmp_path / "debates.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (record, record, unknown)) + "\n")
    rows = judge_rows_from_human_debates(str(path))
    assert [letter for _, letter in rows] == ["A", "B"]  # one debate, both orders; the second session and
    user = rows[0][0][-1]["content"]                       # the debate without a known answer are skipped
    assert "<quote>Ann found the key</quote>" in user and "<invalid_quote>Bob found it</invalid_quote>" in user


def test_bad_target_or_select_is_a_clear_error():
    with pytest.raises(ValueError, match="select must be 'all'"):
        SFTDataModule(results=["synthetic:2"], target="judge_verdict", select="winner")
    with pytest.raises(ValueError, match="data.target"):
        SFTDataModule(results=["synthetic:2"], target="verdict")  # type: ignore[arg-type]


def _tournament(root, models, judge_model, name) -> dict[str, dict]:
    cfg = {"data": {"source": "synthetic", "limit": 2, "both_orders": True}, "models": models,
           "debaters": [{"name": "a", "model": "r"}], "judge": {"model": judge_model},
           "formats": [{"kind": "debate", "num_speeches": 1}], "schedule": {"kind": "self_play"}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = root / name
    assert tournament_main(["--config", str(root / f"{name}.yaml"), "--output", str(out), "--progress", "false",
                            "--report", "false"]) == 0
    return {r.round_id: r for r in ResultsFile(out).latest()}


def test_sft_judge_adapter_judges_a_tournament(tiny_model, tmp_path):
    models = {"r": {"backend": "random"}, "j": {"backend": "hf", "path": tiny_model, "dtype": "float32"}}
    base = _tournament(tmp_path, models, "j", "base")
    assert len(base) == 4 and all(r.ok for r in base.values())

    L.seed_everything(0)
    module = SFTModule(PolicyConfig(tiny_model, LoraSpec(r=8, alpha=16, target_modules=["q_proj", "v_proj"])),
                       OptimConfig(lr=2e-2))
    dm = SFTDataModule(results=[str(tmp_path / "base")], target="judge_verdict", batch_size=4, max_prompt_length=4096)
    run = tmp_path / "judge_run"
    L.Trainer(accelerator="cpu", max_steps=12, default_root_dir=run, enable_progress_bar=False,
              enable_model_summary=False, logger=L.pytorch.loggers.CSVLogger(run, name="", version="v"),
              log_every_n_steps=1, enable_checkpointing=False).fit(module, dm)
    losses = [float(r["loss"]) for r in csv.DictReader(open(run / "v" / "metrics.csv")) if r.get("loss")]
    assert losses[-1] < losses[0]  # the judge's NLL of the correct letter fell
    adapter = run / "v" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    tuned = _tournament(tmp_path, {**models, "j": {**models["j"], "adapter": str(adapter)}}, "j", "tuned")
    assert tuned.keys() == base.keys() and all(r.ok for r in tuned.values())
    for rid, r in tuned.items():
        assert [s["text"] for s in r.speeches] == [s["text"] for s in base[rid].speeches]  # only the judge differs
        assert r.p_a_orders != pytest.approx(base[rid].p_a_orders, abs=1e-3)  # the adapter changed P(A)
