"""Activations from judged rounds: rows, labels and values, resume after a kill, headers, the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tournament_helpers import make_result, scripted_config

from debate_lightning.__main__ import main
from debate_lightning.debate.agents import prompts_for
from debate_lightning.tournament.activations import (HEADER_FILE, INDEX_FILE, ActivationStore, HeaderMismatch,
                                                     extract_activations, shard_name)
from debate_lightning.tournament.cli import tournament_main
from debate_lightning.tournament.results import ResultsFile, read_results

LAYERS = [-1, -2, 0]  # the tiny model has 2 layers: hidden-state indices -3..2


def play(tmp_path_factory, tiny_model_dir, name, formats, limit):
    """A tournament dir: random debaters, the tiny hf model as judge (both orders)."""
    root = tmp_path_factory.mktemp(name)
    models = {"r": {"backend": "random"}, "j": {"backend": "hf", "path": str(tiny_model_dir), "dtype": "float32"}}
    cfg = scripted_config(root / "t.yaml", models=models, judge={"model": "j"}, formats=formats,
                          data={"source": "synthetic", "limit": limit, "both_orders": True})
    assert tournament_main(["--config", str(cfg), "--output", str(root / "out"), "--progress", "false",
                            "--report", "false"]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def debate_dir(tmp_path_factory, tiny_model_dir):
    out = play(tmp_path_factory, tiny_model_dir, "debate", [{"kind": "debate", "num_speeches": 1}], 2)
    ResultsFile(out).append(make_result("broken", 0, None, status="failed"))  # skipped and counted
    return out


@pytest.fixture(scope="module")
def consultancy_dir(tmp_path_factory, tiny_model_dir):
    formats = [{"kind": "consultancy", "consultant_side": side} for side in (0, 1)]
    return play(tmp_path_factory, tiny_model_dir, "consultancy", formats, 1)


def judged(directory):
    return [r for r in ResultsFile(directory).latest() if r.ok]


def by_key(store: ActivationStore):
    acts, index = store.load()
    return {(line["round_id"], line["order"]): (acts[i], line) for i, line in enumerate(index)}


def without_place(line):
    return {k: v for k, v in line.items() if k not in ("row", "shard", "offset")}


def test_rows_labels_and_values_in_both_orders(debate_dir, tiny_generator, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    rounds = judged(debate_dir)
    summary = extract_activations([debate_dir], tiny_generator, LAYERS, tmp_path / "acts", batch_size=3, progress=False)
    assert summary["rounds"] == len(rounds) == 8 and summary["failed_rounds"] == 1
    assert summary["rows_written"] == summary["rows"] == 16 and summary["rows_skipped"] == 0
    store = ActivationStore(tmp_path / "acts")
    assert store.header == {"model": "tiny", "model_name": "tiny", "adapter": None, "hidden_size": 32, "num_layers": 2,
                            "layers": LAYERS, "prompt_sets": ["debate"], "dtype": "float32", "format_version": 1}
    assert sorted({line["shard"] for line in store.index}) == [shard_name(i) for i in range(3)]  # 3 + 3 + 2 rounds
    acts, index = store.load()
    assert acts.shape == (16, 3, 32) and acts.dtype == torch.float32
    assert [line["row"] for line in index] == list(range(16))

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    a_id, b_id = (tiny_generator.text_ids(c)[0] for c in "AB")
    chats, rows = [], {(line["round_id"], line["order"]): i for i, line in enumerate(index)}
    for r in rounds:
        tr, q = r.transcript(), r.transcript().question
        for order in (0, 1):
            i = rows[(r.round_id, order)]
            line = index[i]
            assert line["label"] == int(q.positions[q.correct_index] == (q.positions[1] if order else q.positions[0]))
            assert (line["question_id"], line["story_id"], line["split"], line["format"], line["source"]) == (
                q.question_id, q.story_id, q.split, "debate", str(debate_dir))
            chat = tr.judge_chat(prompts_for(tr.format), swap=bool(order))
            chats.append((i, chat))
            ids = torch.tensor([tiny_generator.chat_ids(chat)])
            with torch.no_grad():
                out = plain(input_ids=ids, output_hidden_states=True)
            expected = torch.stack([out.hidden_states[layer][0, -1] for layer in LAYERS])
            torch.testing.assert_close(acts[i], expected, atol=1e-4, rtol=1e-4)
            # The verdict position: the LLM judge's P(A) in this order is the A/B softmax read off
            # the stored last layer (after the final norm) through the model's head.
            logits = plain.lm_head(acts[i, 0])
            p_a = torch.sigmoid(logits[a_id] - logits[b_id]).item()
            assert line["judge_p_a"] == pytest.approx(p_a, abs=1e-4)
            assert line["judge_p_a"] == pytest.approx(r.p_a_orders[order] if order == 0 else 1 - r.p_a_orders[order])
    # The same rows as the generator's own call on all the judge chats at once.
    direct = tiny_generator.hidden_states([tiny_generator.chat_ids(c) for _, c in chats], LAYERS)
    torch.testing.assert_close(acts[[i for i, _ in chats]], direct, atol=1e-5, rtol=1e-5)
    assert sum(line["label"] for line in index) == 8  # each round: A correct in exactly one order


def test_a_kill_then_resume_writes_only_the_missing_rows(debate_dir, tiny_generator, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    extract_activations([debate_dir], tiny_generator, LAYERS, whole, batch_size=8, progress=False)

    out = tmp_path / "killed"
    real, calls = tiny_generator.hidden_states, []

    def killed_after_two_batches(prompts, layers):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(prompts, layers)

    monkeypatch.setattr(tiny_generator, "hidden_states", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        extract_activations([debate_dir], tiny_generator, LAYERS, out, batch_size=1, progress=False)
    monkeypatch.undo()
    assert calls == [2, 2] and len(ActivationStore(out)) == 4
    # What harder kills leave: a shard renamed into place whose index lines never came, a
    # temporary shard, half an index line; and a shard lost since.
    shutil.copy(out / shard_name(1), out / shard_name(2))
    (out / (shard_name(3) + ".tmp")).write_bytes(b"half a shard")
    with (out / INDEX_FILE).open("a") as f:
        f.write('{"row": 4, "shard": "shard-00002.safetensors", "offs')
    (out / shard_name(0)).unlink()

    summary = extract_activations([debate_dir], tiny_generator, LAYERS, out, batch_size=3, progress=False)
    assert summary["dropped_index_lines"] == 3  # the two lines of the lost shard, and the half line
    assert (summary["rows_written"], summary["rows_skipped"], summary["rows"]) == (14, 2, 16)
    assert not list(out.glob("*.tmp"))
    resumed, fresh = by_key(ActivationStore(out)), by_key(ActivationStore(whole))
    assert resumed.keys() == fresh.keys() and len(resumed) == 16
    for key, (act, line) in fresh.items():
        torch.testing.assert_close(resumed[key][0], act, atol=1e-5, rtol=1e-5)
        assert without_place(resumed[key][1]) == without_place(line)
    assert [line["row"] for line in ActivationStore(out).index] == list(range(16))
    # Nothing left to do: nothing changes.
    before = (out / INDEX_FILE).read_bytes()
    again = extract_activations([debate_dir], tiny_generator, LAYERS, out, progress=False)
    assert (again["rows_written"], again["rows_skipped"]) == (0, 16) and (out / INDEX_FILE).read_bytes() == before


def test_a_store_made_with_other_settings_is_refused(debate_dir, tiny_generator, tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "acts"
    extract_activations([debate_dir], tiny_generator, [-1], out, progress=False, limit=1)
    index = (out / INDEX_FILE).read_bytes()
    with pytest.raises(HeaderMismatch, match=r"layers: \[-1\] there, \[-1, 0\] here"):
        extract_activations([debate_dir], tiny_generator, [-1, 0], out, progress=False)
    with pytest.raises(HeaderMismatch, match="model: 'tiny' there, 'other' here"):
        extract_activations([debate_dir], tiny_generator, [-1], out, progress=False, model="other")
    code = main(["activations", "--rounds", str(debate_dir), "--model", str(tiny_model_dir), "--layers", "-1",
                 "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"model: 'tiny' there, '{tiny_model_dir}' here" in err and "model_name" in err
    assert (out / INDEX_FILE).read_bytes() == index  # refused before touching anything
    # More rounds of another prompt set are another store.
    with pytest.raises(HeaderMismatch, match="prompt_sets"):
        extract_activations([debate_dir, make_dir(tmp_path / "c", kind="consultancy")], tiny_generator, [-1], out,
                            progress=False)


def make_dir(path, kind="debate", status="ok"):
    """A tournament dir of hand-made rounds (no model)."""
    rf = ResultsFile(path)
    for qid in ("h1", "h2"):
        rf.append(make_result(qid, 1, 0.4, kind=kind, status=status, quotes=[[("Ann found the key", True)]]))
    return path


def test_several_rounds_dirs_shards_and_conflicts(debate_dir, consultancy_dir, tiny_generator, tmp_path):
    out = tmp_path / "acts"
    merged = tmp_path / "merged"
    merged.mkdir()
    shutil.copy(debate_dir / "rounds.jsonl", merged / "rounds.jsonl")  # the same rounds again: counted once
    summary = extract_activations([debate_dir, consultancy_dir, merged], tiny_generator, [-1], out, batch_size=5,
                                  progress=False)
    n_debate, n_consult = len(judged(debate_dir)), len(judged(consultancy_dir))
    assert (n_debate, n_consult) == (8, 8)
    assert summary["rows"] == 2 * (n_debate + n_consult) and summary["duplicate_rounds"] == n_debate
    store = ActivationStore(out)
    assert store.header["prompt_sets"] == ["consultancy", "debate"]
    sources = {(line["source"], line["format"]) for line in store.index}
    assert sources == {(str(debate_dir), "debate"), (str(consultancy_dir), "consultancy")}
    assert {line["format_name"] for line in store.index} == {"debate", "consultancy0", "consultancy1"}

    # One round id with two different transcripts: two tournaments, one store is wrong.
    other = tmp_path / "other"
    other.mkdir()
    line = json.loads((debate_dir / "rounds.jsonl").read_text().splitlines()[0])
    line["speeches"][0]["text"] = "something else entirely"
    (other / "rounds.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=f"round {line['round_id']} is in .* different transcripts"):
        extract_activations([debate_dir, other], tiny_generator, [-1], tmp_path / "x", progress=False)
    assert read_results(other)[0].round_id == line["round_id"]


def test_bad_input_is_a_clear_error(tmp_path, tiny_model_dir, capsys, debate_dir):
    def run(*argv):
        code = main(["activations", "--model", str(tiny_model_dir), "--output", str(tmp_path / "acts"),
                     "--no-progress", *argv])
        return code, capsys.readouterr().err

    missing = tmp_path / "nope"
    code, err = run("--rounds", str(missing))
    assert code == 2 and f"{missing} is not a directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run("--rounds", str(empty))
    assert code == 2 and f"{empty} has no rounds.jsonl" in err
    failed = make_dir(tmp_path / "failed", status="failed")
    code, err = run("--rounds", str(failed))
    assert code == 2 and f"no judged rounds in {failed} (2 failed" in err
    for layer in ("3", "-4"):
        code, err = run("--rounds", str(debate_dir), "--layers", "-1", layer)
        assert code == 2 and f"{layer} is out of range" in err and "has 2 layers" in err
    code, err = run("--rounds", str(debate_dir), "--layers", "-1", "2", "-1")
    assert code == 2 and "[-1] given more than once" in err
    code, err = run("--rounds", str(debate_dir), "--model", str(tmp_path / "no-model"))
    assert code == 2 and f"--model {tmp_path / 'no-model'}: cannot load it" in err
    code, err = run("--rounds", str(debate_dir), "--output", str(debate_dir))
    assert code == 2 and "is a tournament directory" in err
    assert not (tmp_path / "acts").exists()  # nothing written by any of them


def test_the_command_end_to_end_and_its_rerun(debate_dir, consultancy_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "acts"
    argv = ["activations", "--rounds", str(debate_dir), str(consultancy_dir), "--model", str(tiny_model_dir),
            "--layers", "-1", "0", "--output", str(out), "--batch-size", "4", "--limit", "10"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "activations: 100%" in captured.err and "10/10" in captured.err  # the progress bar
    summary = json.loads(captured.out[: captured.out.rindex("}") + 1])
    assert (summary["rounds"], summary["rows_written"], summary["failed_rounds"]) == (10, 20, 1)
    assert f"10 rounds: wrote 20 rows, skipped 0 already stored; 20 rows in {out}" in captured.out
    store = ActivationStore(out)
    assert store.header["model"] == str(tiny_model_dir) and store.header["model_name"] == tiny_model_dir.name
    assert store.header["layers"] == [-1, 0] and store.load()[0].shape == (20, 2, 32)
    assert json.loads((out / HEADER_FILE).read_text()) == store.header

    # Without the limit the rerun does the rest only; bars off either way.
    assert main([*argv[:-2], "--progress", "false"]) == 0
    captured = capsys.readouterr()
    assert "16 rounds: wrote 12 rows, skipped 20 already stored; 32 rows" in captured.out
    assert "activations:" not in captured.err


@pytest.mark.slow
def test_extraction_equals_a_plain_forward_on_the_embedded_model(debate_dir, embedded_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from debate_lightning.models.chat import chat_ids

    out = tmp_path / "acts"
    assert main(["activations", "--rounds", str(debate_dir), "--model", "embedded", "--layers", "-1", "-4", "-8",
                 "--output", str(out), "--limit", "2", "--no-progress"]) == 0
    store = ActivationStore(out)
    assert store.header["model_name"] == "smollm2-135m" and store.header["num_layers"] == 30
    acts, index = store.load()
    plain = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()
    rounds = {r.round_id: r for r in judged(debate_dir)}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    for i, line in enumerate(index):
        tr = rounds[line["round_id"]].transcript()
        ids = torch.tensor([chat_ids(tokenizer, tr.judge_chat(prompts_for(tr.format), swap=bool(line["order"])))])
        with torch.no_grad():
            states = plain(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts[i], torch.stack([states[j][0, -1] for j in (-1, -4, -8)]), atol=1e-3, rtol=1e-4)
