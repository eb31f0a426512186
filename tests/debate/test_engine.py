import math

import pytest

from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge
from debate_lightning.debate.engine import RoundResult, RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import Generation, Generator
from debate_lightning.models.scripted import DeterministicGenerator


class Echo(Generator):
    """Writes which side it is and records every chat it was given, per call."""

    name = "echo"

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list] = []
        self.fail_on = fail_on

    def generate(self, chats, params):
        self.calls.append(chats)
        out = []
        for chat in chats:
            user = chat[-1]["content"]
            side = "A" if "You are Debater A" in user or "You are Consultant A" in user else "B"
            if self.fail_on and self.fail_on in user:
                out.append(Generation("", error="HTTP 500 from backend"))
            else:
                out.append(Generation(f"speech-{side}-{len(self.calls)}"))
        return out


class LengthJudge(Generator):
    """Prefers answer A in proportion to how long the transcript is: deterministic, content-based."""

    name = "length-judge"

    def choice_logprobs(self, chats, choices):
        return [[0.0, -len(c[-1]["content"]) / 1000.0] for c in chats]

    def generate(self, chats, params):
        raise AssertionError("a scoring judge must not sample")


def specs(questions, fmt, names=("x", "x")):
    return [RoundSpec(q, fmt, names) for q in questions]


def test_one_batched_call_per_step(questions):
    echo = Echo()
    results = run_rounds(specs(questions, Format(num_speeches=2)), {"x": Debater("x", echo)}, Judge(LengthJudge()))
    # 4 sequential steps; every step gathers that step's speech of ALL rounds into one call.
    assert [len(c) for c in echo.calls] == [len(questions)] * 4
    assert all(len(r.speeches) == 4 and r.ok for r in results)
    assert [s["side"] for s in results[0].speeches] == [0, 1, 0, 1]


def test_simultaneous_speakers_are_blind_to_each_other(questions):
    echo = Echo()
    run_rounds(specs(questions, Format(num_speeches=2, simultaneous=True)), {"x": Debater("x", echo)}, Judge(LengthJudge()))
    assert [len(c) for c in echo.calls] == [2 * len(questions)] * 2
    first_step_chats = echo.calls[0]
    assert all("speech-" not in chat[-1]["content"] for chat in first_step_chats)
    second = echo.calls[1]
    # At step 2 each side sees both step-1 speeches (A's and B's), nothing from step 2: its own
    # as its earlier (assistant) message, the other's in the new user message.
    seen = ["\n".join(m["content"] for m in c[1:]) for c in second]
    assert all("speech-A-1" in text and "speech-B-1" in text for text in seen)
    assert all(c[-2]["role"] == "assistant" and c[-2]["content"].startswith("speech-") for c in second)
    assert all(c[-2]["content"] not in c[-1]["content"] for c in second)


def test_result_fields_and_judge_probability(questions):
    results = run_rounds(specs(questions, Format(num_speeches=1)), {"x": Debater("x", Echo())}, Judge(LengthJudge()))
    r = results[0]
    d = r.to_dict()
    for key in ("round_id", "question", "speeches", "p_a", "winner", "correct_index", "judge_correct", "timings"):
        assert key in d
    assert len(r.p_a_orders) == 2 and r.p_a == pytest.approx(sum(r.p_a_orders) / 2)
    assert r.winner == (0 if r.p_a >= 0.5 else 1)
    assert r.judge_correct == (r.winner == r.correct_index)
    assert RoundResult.from_dict(d) == r
    assert r.transcript().speeches[0].text == r.speeches[0]["text"]


def test_round_ids_stable_and_distinct(questions):
    a = specs(questions, Format())
    b = specs(questions, Format())
    assert [s.round_id for s in a] == [s.round_id for s in b]
    assert len({s.round_id for s in a}) == len(a)
    assert RoundSpec(questions[0], Format(), ("x", "x"), repeat=1).round_id != a[0].round_id


def test_failed_speech_marks_round_failed_and_others_continue(questions):
    bad_question = questions[0].question
    echo = Echo(fail_on=bad_question)
    results = run_rounds(specs(questions, Format(num_speeches=2)), {"x": Debater("x", echo)}, Judge(LengthJudge()))
    failed = [r for r in results if r.question["question"] == bad_question]
    assert failed and all(r.status == "failed" and "HTTP 500" in r.error and r.p_a is None for r in failed)
    assert any(r.ok for r in results)
    # A failed round stops speaking: one failed speech, no further turns.
    assert all(len(r.speeches) == 1 for r in failed)


def test_best_of_n_keeps_judges_favourite(questions):
    gen = DeterministicGenerator(template="candidate {i} " + "word " * 3)

    class Lengthy(DeterministicGenerator):
        def generate(self, chats, params):
            return [Generation("x" * (1 + i % 3)) for i in range(len(chats))]

    judge = Judge(LengthJudge(), both_orders=False)
    bon = BestOfNDebater("x", Lengthy(), n=3, judge=judge)
    results = run_rounds(specs(questions[:1], Format(num_speeches=1)), {"x": bon}, judge)
    speeches = results[0].speeches
    for s in speeches:
        assert len(s["candidates"]) == 3 and sum(c["chosen"] for c in s["candidates"]) == 1
        best = max(s["candidates"], key=lambda c: c["score"])
        assert best["chosen"] and best["text"] == s["text"]
    # LengthJudge favours A with longer transcripts: side A keeps its longest candidate.
    assert speeches[0]["text"] == "xxx"
    assert gen is not None


def test_unknown_debater_is_named(questions):
    with pytest.raises(KeyError, match="nobody"):
        run_rounds(specs(questions, Format(), ("nobody", "nobody")), {"x": Debater("x", Echo())}, Judge(LengthJudge()))


def test_text_verdict_fallback_for_generators_without_logprobs(questions):
    class Verdicts(Generator):
        name = "verdicts"

        def generate(self, chats, params):
            return [Generation("Answer: A | 80%") for _ in chats]

    judge = Judge(Verdicts(), both_orders=True)
    results = run_rounds(specs(questions[:1], Format(num_speeches=1)), {"x": Debater("x", Echo())}, judge)
    # "A" with 80% in both presentations: 0.8 for position 0, then 1 - 0.8 after the swap.
    assert results[0].p_a_orders == pytest.approx([0.8, 0.2])
    assert not math.isnan(results[0].p_a)


def test_judge_failure_reason_is_recorded(questions):
    class Broken(Generator):
        name = "broken"

        def generate(self, chats, params):
            return [Generation("", error="HTTP 503 after 4 attempts") for _ in chats]

    results = run_rounds(specs(questions[:1], Format(num_speeches=1)), {"x": Debater("x", Echo())}, Judge(Broken()))
    r = results[0]
    assert r.status == "failed" and r.p_a is None and r.winner is None
    assert "judge gave no verdict" in r.error and "HTTP 503" in r.error
