"""Scratchpads (issue 17 item 2): private debater notes and judge reasoning before the verdict.

Scripted generators record the exact chats they were given, so the tests can assert who saw what;
the tiny model runs the same code through transformers, and a tournament runs end to end on it.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge, prompts_for
from debate_lightning.debate.engine import RoundSpec, run_rounds
from debate_lightning.debate.formats import Format, Scratchpad
from debate_lightning.debate.transcript import Transcript
from debate_lightning.models.base import Generation, Generator, SamplingParams, normalize
from debate_lightning.prompts.render import load_prompt_set

PAD = {"debater": True, "judge": False, "max_new_tokens": 12}


def side_of(chat) -> str:
    users = " ".join(m["content"] for m in chat if m["role"] == "user")
    return "A" if "You are Debater A" in users or "You are Consultant A" in users else "B"


def asks_for_notes(chat) -> bool:
    return "write private notes" in chat[-1]["content"]


class Scribe(Generator):
    """Writes NOTES-<side>-<call> when asked for notes, else speech-<side>-<call>; records calls."""

    name = "scribe"

    def __init__(self, fail_notes: bool = False):
        self.calls: list[tuple[list, object]] = []
        self.fail_notes = fail_notes

    def generate(self, chats, params):
        self.calls.append((list(chats), params))
        n = len(self.calls)
        out = []
        for chat in chats:
            if asks_for_notes(chat):
                out.append(Generation("", error="HTTP 500") if self.fail_notes else Generation(f"NOTES-{side_of(chat)}-{n}"))
            else:
                out.append(Generation(f"speech-{side_of(chat)}-{n}"))
        return out


class Reasoner(Generator):
    """A judge that reasons "favour A" in the first order and "favour B" in the swapped one
    (the swapped chat lists position 1 as A) and scores from its own reasoning, never sampling a verdict."""

    name = "reasoner"

    def __init__(self):
        self.generated: list[tuple[list, object]] = []
        self.scored: list[list] = []

    def generate(self, chats, params):
        self.generated.append((list(chats), params))
        return [Generation(f"REASONING favour {'A' if i % 2 == 0 else 'B'} #{i}") for i, _ in enumerate(chats)]

    def choice_logprobs(self, chats, choices):
        self.scored.extend(chats)
        out = []
        for chat in chats:
            said = " ".join(m["content"] for m in chat if m["role"] == "assistant")
            out.append([0.0, -2.0] if "favour A" in said else [-2.0, 0.0] if "favour B" in said else [0.0, 0.0])
        return out


def play(questions, fmt, gen=None, judge_gen=None, num=None):
    gen = gen or Scribe()
    judge_gen = judge_gen or Reasoner()
    specs = [RoundSpec(q, fmt, ("x", "x")) for q in questions[:num]]
    results = run_rounds(specs, {"x": Debater("x", gen)}, Judge(judge_gen))
    return results, gen, judge_gen


def test_notes_come_first_in_one_batched_call_and_only_their_writer_sees_them(questions):
    fmt = Format(num_speeches=2, scratchpad=PAD)
    results, scribe, reasoner = play(questions, fmt)
    n = len(questions)
    # 4 sequential steps, each: one notes call for every round, then one speech call.
    assert [len(c) for c, _ in scribe.calls] == [n] * 8
    assert [all(asks_for_notes(ch) for ch in c) for c, _ in scribe.calls] == [True, False] * 4
    assert all(p.max_new_tokens == 12 for c, p in scribe.calls[0::2])
    assert all(p.max_new_tokens == 128 for c, p in scribe.calls[1::2])  # the debater's own budget
    for step in range(4):
        (notes_chats, _), (speech_chats, _) = scribe.calls[2 * step], scribe.calls[2 * step + 1]
        for notes_chat, speech_chat in zip(notes_chats, speech_chats):
            side = side_of(speech_chat)
            # The speech chat is the notes chat + its own notes + the request for the speech.
            assert speech_chat[: len(notes_chat)] == notes_chat
            assert speech_chat[len(notes_chat)] == {"role": "assistant", "content": f"NOTES-{side}-{2 * step + 1}"}
            assert speech_chat[-1]["role"] == "user" and "using your notes" in speech_chat[-1]["content"]
            assert len(speech_chat) == len(notes_chat) + 2
    # No chat ever holds the other side's notes, nor notes of an earlier speech: a notes chat holds
    # none, a speech chat exactly its writer's notes of the call just before.
    for i, (chats, _) in enumerate(scribe.calls, start=1):
        for chat in chats:
            found = set(re.findall(r"NOTES-[AB]-\d+", json.dumps(chat)))
            assert found == (set() if i % 2 else {f"NOTES-{side_of(chat)}-{i - 1}"})
    # The opponent did see the speeches (so the check above is not vacuous).
    assert any("speech-A-2" in json.dumps(chat) for chat in scribe.calls[3][0])
    # The judge sees speeches, never notes; the notes are kept on the speeches.
    assert reasoner.scored and all("NOTES" not in json.dumps(c) for c in reasoner.scored)
    assert not reasoner.generated  # judge: false -> no reasoning
    for r in results:
        assert r.ok and r.judge_reasoning == []
        assert [s["scratchpad"] for s in r.speeches] == [f"NOTES-{'AB'[s['side']]}-{2 * s['step'] + 1}" for s in r.speeches]


def test_judge_reasons_per_order_and_p_a_is_scored_after_its_reasoning(questions):
    fmt = Format(num_speeches=1, scratchpad={"judge": True, "max_new_tokens": 20})
    results, scribe, reasoner = play(questions, fmt)
    n = len(questions)
    # One reasoning call for every round and both orders, with the scratchpad's budget, greedy.
    [(chats, params)] = reasoner.generated
    assert len(chats) == 2 * n and params.max_new_tokens == 20 and params.temperature == 0.0
    assert all("reason step by step" in c[-1]["content"] for c in chats)
    # The scored chats are the reasoning chats + that order's own reasoning + the decision request.
    assert len(reasoner.scored) == 2 * n
    for i, (asked, scored) in enumerate(zip(chats, reasoner.scored)):
        assert scored[: len(asked)] == asked
        assert scored[len(asked)] == {"role": "assistant", "content": f"REASONING favour {'AB'[i % 2]} #{i}"}
        assert scored[-1]["content"].startswith("Which answer is correct?") and len(scored) == len(asked) + 2
    p = normalize([0.0, -2.0])[0]
    for k, r in enumerate(results):
        # Order 0 reasoned for A (P(A)=p); the swapped order for its B, which is position 0 again.
        assert r.p_a_orders == pytest.approx([p, p])
        assert r.judge_reasoning == [f"REASONING favour A #{2 * k}", f"REASONING favour B #{2 * k + 1}"]
        assert all(s["scratchpad"] is None for s in r.speeches)
    assert not any(asks_for_notes(c) for calls, _ in scribe.calls for c in calls)  # debater: false


def test_a_format_without_scratchpad_plays_exactly_as_before(questions):
    plain, scribe, reasoner = play(questions, Format(num_speeches=2))
    off, scribe_off, reasoner_off = play(questions, Format(num_speeches=2, scratchpad={"debater": False}))
    assert [c for c, _ in scribe.calls] == [c for c, _ in scribe_off.calls]
    assert len(scribe.calls) == 4 and not reasoner.generated and not reasoner_off.generated
    assert reasoner.scored == reasoner_off.scored
    assert Format(num_speeches=2).name == "debate" and plain[0].round_id != run_rounds(
        [RoundSpec(questions[0], Format(num_speeches=2, scratchpad=PAD), ("x", "x"))],
        {"x": Debater("x", Scribe())}, Judge(Reasoner()))[0].round_id
    # The judge's chat is the two messages it always was: system, then question + debate + decision.
    t = plain[0].transcript()
    prompts = load_prompt_set("debate")
    [system, user] = reasoner.scored[0]
    assert system["content"] == prompts.render("judge_system")
    assert user["content"].endswith(prompts.render("judge_decision")) and "reason step by step" not in user["content"]
    assert t.judge_chat(prompts) == reasoner.scored[0]
    for r in plain:
        assert all(s["scratchpad"] is None for s in r.speeches) and r.judge_reasoning == []


def test_failed_notes_fail_the_round_with_a_named_error(questions):
    results, _, _ = play(questions, Format(num_speeches=1, scratchpad=PAD), gen=Scribe(fail_notes=True))
    assert all(r.status == "failed" and "scratchpad: HTTP 500" in r.error for r in results)


def test_a_debater_that_cannot_write_scratchpads_is_refused_by_name(questions):
    fmt = Format(num_speeches=1, scratchpad=PAD)
    bon = BestOfNDebater("bon", Scribe(), n=2, judge=Judge(Reasoner()))
    with pytest.raises(ValueError, match=r"debater 'bon' \(BestOfNDebater\) does not write scratchpads"):
        run_rounds([RoundSpec(questions[0], fmt, ("bon", "bon"))], {"bon": bon}, Judge(Reasoner()))


def test_bad_scratchpad_values_are_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"scratchpad: unknown keys \['judg'\]"):
        Format(scratchpad={"debater": True, "judg": True})
    with pytest.raises(ValueError, match="scratchpad: expected a mapping"):
        Format(scratchpad=True)
    with pytest.raises(ValueError, match="scratchpad.max_new_tokens must be >= 1"):
        Format(scratchpad={"debater": True, "max_new_tokens": 0})
    from debate_lightning.tournament.cli import parse_tournament_args

    bad = tmp_path / "bad.yaml"
    bad.write_text("formats: [{kind: debate, scratchpad: {debater: true, judg: true}}]\n")
    with pytest.raises(BaseException, match="judg"):
        parse_tournament_args(["--config", str(bad)])


def test_a_saved_round_restores_its_scratchpad_format(questions):
    [r] = play(questions, Format(num_speeches=1, scratchpad=PAD), num=1)[0]
    line = json.loads(json.dumps(r.to_dict()))
    assert line["format"]["scratchpad"] == PAD
    t = type(r).from_dict(line).transcript()
    assert t.format.scratchpad == Scratchpad(**PAD) and t.speeches[0].scratchpad == "NOTES-A-1"


def test_prompt_sets_gain_the_templates_with_defaults_and_unknown_ones_are_errors(tmp_path):
    for name in ("debate", "consultancy", "empty"):
        p = load_prompt_set(name)
        assert p.has("judge_reasoning") and p.has("debater_scratchpad") and p.has("debater_scratchpad_speech")
    required = ("debater_system", "debater_turn", "judge_system", "judge_user", "judge_decision", "transcript_entry")
    old = tmp_path / "old.yaml"
    old.write_text("\n".join(f"{k}: {k + ' {question}'!r}" for k in required))
    p = load_prompt_set(str(old))  # an older set without scratchpad templates gets the defaults
    assert "write private notes" in p.render("debater_scratchpad", opponent="Debater B")
    assert not p.has("debater_next_turn")
    typo = tmp_path / "typo.yaml"
    typo.write_text(old.read_text() + "\ndebater_scrachpad: 'notes please'\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown templates \['debater_scrachpad'\]"):
        load_prompt_set(str(typo))


def test_the_tiny_model_reasons_then_scores_after_its_reasoning(questions, tiny_generator):
    fmt = Format(num_speeches=1, word_limit=20, scratchpad={"debater": True, "judge": True, "max_new_tokens": 6})
    debater = Debater("tiny", tiny_generator, params=SamplingParams(max_new_tokens=6, temperature=0.0))
    specs = [RoundSpec(q, fmt, ("tiny", "tiny")) for q in questions[:2]]
    judge = Judge(tiny_generator)
    results = run_rounds(specs, {"tiny": debater}, judge)
    for r in results:
        assert r.ok and len(r.judge_reasoning) == 2 and all(s["scratchpad"] is not None for s in r.speeches)
        t = r.transcript()
        prompts = prompts_for(t.format)
        # P(A) per order is the A/B score of the chat that holds that order's reasoning.
        for swap, (p, reasoning) in enumerate(zip(r.p_a_orders, r.judge_reasoning)):
            chat = t.judge_chat(prompts, swap=bool(swap), reasoning=reasoning)
            assert chat[-2] == {"role": "assistant", "content": reasoning}
            [lp] = tiny_generator.choice_logprobs([chat], ["A", "B"])
            expected = normalize(lp)[0]
            assert p == pytest.approx(expected if not swap else 1.0 - expected, abs=1e-4)
        assert 0.0 < r.p_a < 1.0 and not math.isnan(r.p_a)


def test_a_scratchpad_tournament_runs_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    from debate_lightning.tournament.cli import tournament_main
    from debate_lightning.tournament.results import read_results

    cfg = yaml.safe_load(open(_shipped_config()))
    cfg["models"] = {"tiny": {"backend": "hf", "path": str(tiny_model_dir), "dtype": "float32"}}
    cfg["debaters"][0].update(model="tiny", max_new_tokens=8)
    cfg["judge"]["model"] = "tiny"
    cfg["formats"][0]["scratchpad"]["max_new_tokens"] = 6
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert tournament_main(["--config", str(path), "--output", str(out), "--progress", "false", "--report", "false"]) == 0
    lines = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["status"] == "ok" for x in lines)
    for x in lines:
        assert x["format"]["scratchpad"] == {"debater": True, "judge": True, "max_new_tokens": 6}
        assert len(x["judge_reasoning"]) == 2 and all(isinstance(s["scratchpad"], str) for s in x["speeches"])
    assert {r.format["scratchpad"]["debater"] for r in read_results(out)} == {True}


def _shipped_config():
    from pathlib import Path

    import debate_lightning

    return Path(debate_lightning.__file__).parent / "configs" / "tournament_scratchpad.yaml"
