"""The repetitive backend: P(A) from letter counts of the last speech; a debater that repeats."""

import math

import pytest

from debate_lightning.models.base import SamplingParams, normalize
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.models.scripted import RepetitiveGenerator, last_speech, letter_counts

DECISION = "Which answer is correct? Reply with the single letter A or B."


def judge_chat(*speeches: tuple[str, str], tagged: bool = False) -> list[dict]:
    """A judge chat as the prompt sets render it: question, answers, speeches, the decision."""
    if tagged:
        entries = [f'<speech by="{name}">\n{text}\n</speech>' for name, text in speeches]
    else:
        entries = [f"{name}: {text}" for name, text in speeches]
    body = "\n\n".join(entries) or "(no speeches yet)"
    user = f"Question: Who found the key?\nA: Ann\nB: Bob\n\nDebate:\n{body}\n\n{DECISION}"
    return [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": user}]


def p_a(chat, choices=("A", "B")) -> float:
    [lp] = RepetitiveGenerator().choice_logprobs([chat], list(choices))
    return normalize(lp)[0]


def test_more_as_in_the_last_speech_gives_p_a_above_half():
    chat = judge_chat(("Debater A", "B B B B B, answer B."), ("Debater B", "Answer A. A is right, not B. A!"))
    # The last speech has 3 standalone A's and 1 B (the earlier all-B speech does not count).
    assert last_speech(chat) == "Answer A. A is right, not B. A!"
    assert p_a(chat) == pytest.approx((3 + 1) / (4 + 2))
    assert p_a(chat) > 0.5


def test_more_bs_gives_p_a_below_half_and_letters_inside_words_do_not_count():
    chat = judge_chat(("Debater A", "A A A A"), ("Debater B", "Alice and Bob: B.\nBut B, surely B."))
    assert p_a(chat) == pytest.approx(1 / 5)


def test_ties_and_missing_speeches_give_exactly_half():
    assert p_a(judge_chat(("Debater A", "A and B, then A and B."))) == 0.5
    assert p_a(judge_chat(("Debater A", "no letters at all here"))) == 0.5
    assert p_a(judge_chat()) == 0.5  # "(no speeches yet)": nothing to count
    assert p_a([{"role": "system", "content": "A A A"}]) == 0.5  # no user message


def test_the_decision_question_is_not_counted_and_a_multi_paragraph_speech_is():
    chat = judge_chat(("Consultant", "It is A.\n\nI say it again: A."))
    assert last_speech(chat) == "It is A.\n\nI say it again: A."
    assert p_a(chat) == pytest.approx(3 / 4)


def test_tagged_speeches_are_read_by_their_tags():
    chat = judge_chat(("Debater A", "A A"), ("Debater B", "B.\nDebater A: A A A A\nB B"), tagged=True)
    # The speaker-like line inside the last speech does not cut it short ("Debater A" counts too).
    assert last_speech(chat) == "B.\nDebater A: A A A A\nB B"
    assert letter_counts(last_speech(chat), ["A", "B"]) == [5, 3]
    assert p_a(chat) == pytest.approx(6 / 10)


def test_any_choices_are_counted_and_probabilities_sum_to_one():
    chat = judge_chat(("Debater A", "X Y Y Z"))
    [lp] = RepetitiveGenerator().choice_logprobs([chat], ["X", "Y", "Z"])
    assert [math.exp(v) for v in lp] == pytest.approx([2 / 7, 3 / 7, 2 / 7])


def test_as_a_debater_it_states_its_answer_then_repeats_the_letter_it_stated():
    gen = RepetitiveGenerator(answer="B", repeats=2)
    first = [{"role": "system", "content": "s"}, {"role": "user", "content": "Which answer?"}]
    later = [*first, {"role": "assistant", "content": "I defend answer A."}, {"role": "user", "content": "Argue."}]
    a, b = gen.generate([first, later], SamplingParams())
    assert a.text == "I defend answer B."
    assert b.text == "Answer A is correct. Answer A is correct."  # its own first statement decides


def test_registry_builds_it_and_bad_options_are_named():
    gen = build_generator(ModelSpec(backend="repetitive", options={"answer": "B"}), name="r")
    assert isinstance(gen, RepetitiveGenerator) and gen.name == "r" and gen.answer == "B"
    with pytest.raises(ValueError, match=r"model 'r' \(backend repetitive\): unknown options \['letters'\]"):
        build_generator(ModelSpec(backend="repetitive", options={"letters": 2}), name="r")
    with pytest.raises(ValueError, match="option repeats"):
        build_generator(ModelSpec(backend="repetitive", options={"repeats": 0}), name="r")


def test_with_judge_reasoning_the_speeches_are_found_in_an_earlier_message():
    chat = judge_chat(("Debater A", "B"), ("Debater B", "A, A."), tagged=True)
    chat += [{"role": "assistant", "content": "B B B B"}, {"role": "user", "content": DECISION}]
    assert last_speech(chat) == "A, A."
    assert p_a(chat) == pytest.approx(3 / 4)
