"""Linear-probe files and the probe judge (``models/probe.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from debate_lightning.debate.agents import Judge, prompts_for
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Transcript
from debate_lightning.models.base import ScoringUnsupported, SamplingParams
from debate_lightning.models.probe import (LinearProbe, ProbeCannotWrite, ProbeJudgeGenerator, is_probe_judge,
                                           probe_judge_name)
from debate_lightning.models.scripted import build_random
from debate_lightning.models.spec import ModelSpec
from probe_files import write_probe


def test_probe_round_trips_and_p_a_is_the_formula_by_hand(tmp_path):
    d = write_probe(tmp_path / "p", model="m", hidden=2, num_layers=3, layers=(-1, 0))
    best = LinearProbe.load(d)
    assert best.name == "concat" and best.layers == [-1, 0] and best.meta["model"] == "m"
    one = LinearProbe.load(d / "probe.safetensors", name="-1")
    assert one.name == "-1" and one.layers == [-1] and one.weight.shape == (2,)
    # The same tensors as written (float32, no pickle: safetensors only).
    from safetensors.torch import load_file

    written = load_file(str(d / "probe.safetensors"))
    for part in ("weight", "bias", "mean", "std"):
        assert torch.equal(getattr(best, part), written[f"concat.{part}"])
    # By hand for one row: x = the two layers concatenated, standardised, dotted, sigmoid.
    acts = torch.tensor([[[1.0, -2.0], [0.5, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    w, b, mu, sd = (best.weight.tolist(), best.bias.item(), best.mean.tolist(), best.std.tolist())
    for row in range(2):
        x = acts[row].flatten().tolist()
        z = sum(wi * (xi - mi) / si for wi, xi, mi, si in zip(w, x, mu, sd)) + b
        assert best.p_a(acts)[row].item() == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-6)
    with pytest.raises(ValueError, match="6 features, the probe takes 4"):
        best.p_a(torch.zeros(1, 3, 2))


def test_probe_files_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file.*fit --config configs/probe.yaml"):
        LinearProbe.load(tmp_path / "nothing")
    d = write_probe(tmp_path / "p", model="m", hidden=2, num_layers=3)
    with pytest.raises(ValueError, match=r"no probe '-4'; it holds \['-1', '0', 'concat'\]"):
        LinearProbe.load(d, name="-4")
    (d / "probe.json").unlink()
    with pytest.raises(FileNotFoundError, match="probe.json"):
        LinearProbe.load(d)
    d = write_probe(tmp_path / "q", model="m", hidden=2, num_layers=3, format_version=7)
    with pytest.raises(ValueError, match="format_version 7"):
        LinearProbe.load(d)
    d = write_probe(tmp_path / "r", model="m", hidden=3, num_layers=3)
    meta = json.loads((d / "probe.json").read_text())
    (d / "probe.json").write_text(json.dumps({**meta, "hidden_size": 4}))
    with pytest.raises(ValueError, match=r"concat.weight has shape \(6,\), expected \(8,\)"):
        LinearProbe.load(d)


def test_probe_judge_p_a_is_the_probe_over_hidden_states(tiny_generator, tmp_path):
    gen = tiny_generator
    probe = LinearProbe.load(write_probe(tmp_path / "p", model=gen.path, hidden=32, num_layers=2, layers=(-1, 1)))
    judge_gen = ProbeJudgeGenerator(gen, probe)
    assert judge_gen.name == f"tiny+probe:concat@{probe.digest}" and len(probe.digest) == 8
    assert is_probe_judge(judge_gen.name) and not is_probe_judge("tiny")
    chats = [[{"role": "user", "content": "Is a cat bigger than a mouse? Answer A or B."}],
             [{"role": "user", "content": "Hi"}]]
    got = judge_gen.choice_logprobs(chats, ["A", "B"])
    want = probe.p_a(gen.hidden_states([gen.chat_ids(c) for c in chats], [-1, 1]))
    for (lp_a, lp_b), p in zip(got, want.tolist()):
        assert math.exp(lp_a) == pytest.approx(p, rel=1e-5) and math.exp(lp_b) == pytest.approx(1 - p, rel=1e-5)
    assert judge_gen.choice_logprobs([], ["A", "B"]) == []
    with pytest.raises(ValueError, match="two answers"):
        judge_gen.choice_logprobs(chats, ["A", "B", "C"])
    # A probe writes nothing: a clear error, not the Judge's text fallback (ScoringUnsupported).
    with pytest.raises(ProbeCannotWrite, match="writes no text") as info:
        judge_gen.generate(chats, SamplingParams())
    assert not isinstance(info.value, ScoringUnsupported)


def test_judge_with_a_probe_averages_both_orders(tiny_generator, tmp_path, questions):
    gen = tiny_generator
    probe = LinearProbe.load(write_probe(tmp_path / "p", model=gen.path, hidden=32, num_layers=2), name="-1")
    judge = Judge(ProbeJudgeGenerator(gen, probe), both_orders=True)
    fmt = Format(kind="debate", num_speeches=1)
    transcripts = [Transcript(question=q, format=fmt) for q in questions[:2]]
    p_a = judge.p_a(transcripts)
    for t, p in zip(transcripts, p_a):
        as_played, swapped = (probe.p_a(gen.hidden_states([gen.chat_ids(t.judge_chat(prompts_for(fmt), swap=s))], [-1]))
                              .item() for s in (False, True))
        # The swapped presentation calls position 0 "B": its P(A) is 1 - the probe's P(A) there.
        assert p == pytest.approx((as_played + (1 - swapped)) / 2, rel=1e-5)
    assert judge.name == f"tiny+probe:-1@{probe.digest}"


def test_a_probe_of_another_model_is_refused_naming_the_mismatch(tiny_generator, tmp_path):
    gen = tiny_generator
    cases = [
        (dict(model="embedded", hidden=32, num_layers=2), "trained on model 'embedded', the judge runs"),
        (dict(model=gen.path, hidden=576, num_layers=2), "hidden_size 576 .* the judge's model has 32"),
        (dict(model=gen.path, hidden=32, num_layers=30), "num_layers 30 .* the judge's model has 2"),
        (dict(model=gen.path, hidden=32, num_layers=2, adapter="lora/"), "adapter 'lora/', the judge runs adapter None"),
    ]
    for k, (kwargs, message) in enumerate(cases):
        model, hidden, layers = kwargs.pop("model"), kwargs.pop("hidden"), kwargs.pop("num_layers")
        probe = LinearProbe.load(write_probe(tmp_path / str(k), model, hidden, layers, layers=(-1,), **kwargs))
        with pytest.raises(ValueError, match=message):
            ProbeJudgeGenerator(gen, probe)
    # The same directory by another spelling is the same model.
    probe = LinearProbe.load(write_probe(tmp_path / "same", str(Path(gen.path) / ".." / Path(gen.path).name), 32, 2))
    assert ProbeJudgeGenerator(gen, probe).probe is probe
    # A judge that reads no hidden states (an API, a scripted model) cannot carry a probe.
    with pytest.raises(ValueError, match="needs a local model"):
        ProbeJudgeGenerator(build_random(ModelSpec(backend="random"), "r"), probe)


def test_prompt_sets_unseen_by_the_probe_are_refused(tmp_path):
    probe = LinearProbe.load(write_probe(tmp_path / "p", "m", 2, 3, prompt_sets=("debate",)))
    probe.check_prompt_sets(["debate"])
    with pytest.raises(ValueError, match=r"prompt set\(s\) \['debate'\]; the tournament's formats use "
                                         r"\['consultancy', 'debate'\] \(\['consultancy'\] unseen\)"):
        probe.check_prompt_sets(["debate", "consultancy"])


def test_probe_judge_name_tells_probe_files_apart(tmp_path):
    assert probe_judge_name("embedded", "-1") == "embedded+probe:-1"
    a = LinearProbe.load(write_probe(tmp_path / "a", "m", 2, 3, seed=0))
    b = LinearProbe.load(write_probe(tmp_path / "b", "m", 2, 3, seed=1))
    assert a.digest != b.digest and a.digest == LinearProbe.load(tmp_path / "a", name="-1").digest
    assert probe_judge_name("embedded", a.name, a.digest) == f"embedded+probe:concat@{a.digest}"
