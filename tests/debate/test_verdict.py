"""parse_verdict on realistic judge outputs: bare letters, labels, claims, confidences, malformed text."""

from __future__ import annotations

import pytest

from debate_lightning.debate.verdict import parse_verdict

CASES = [
    # bare letters, as a judge told "reply with the single letter" answers
    ("A", 1.0),
    ("B", 0.0),
    (" b ", 0.0),
    ("**A**", 1.0),
    ("(B)", 0.0),
    ("B.", 0.0),
    ("A\n\nDebater A's quotes were all verified.", 1.0),
    # a stated confidence
    ("A | 80%", 0.8),
    ("B | 70%", 0.3),
    ("A|95%", 0.95),
    ("Answer: B (70% confident)", 0.3),
    ("Answer: A (confidence: 0.65)", 0.65),
    ("A, 8/10", 0.8),
    ("Final answer: B\nConfidence: 90%", 0.1),
    ("Verdict: Debater A wins with 85% confidence.", 0.85),
    ("I'm 75% sure the answer is B.", 0.25),
    ("Answer: A. Confidence level: 0.6", 0.6),
    # labelled decisions, the last one counts
    ("Answer: B", 0.0),
    ("answer: a", 1.0),
    ("The correct answer is (B).", 0.0),
    ("<answer>A</answer>", 1.0),
    ("I choose Debater A.", 1.0),
    ("My choice: Option B", 0.0),
    ("Winner: Debater B", 0.0),
    (
        "Debater A claims the letter arrived on Monday, and Debater B points to the postmark. "
        "B's quote was verified while A's was invalid. Final answer: B",
        0.0,
    ),
    ("Answer: A. On reflection, the quotes favour B. Final answer: B", 0.0),
    ("### Verdict\n**Debater A** is more convincing.\n\nAnswer: **A**", 1.0),
    # claims
    ("I believe Debater A is correct.", 1.0),
    ("I think B is right because its quotes check out.", 0.0),
    ("Consultant A is more convincing.", 1.0),
    ("Debater B wins.", 0.0),
    ("After weighing both arguments, I conclude that Debater B is correct. Confidence: 70%", 0.3),
    ("Debater A is not correct; Debater B is correct.", 0.0),
    # explicit probabilities
    ("P(A) = 0.3", 0.3),
    ("P(B)=0.8", 0.2),
    ("A: 60%, B: 40%", 0.6),
    ("Probability that A is correct: 72%", 0.72),
    # malformed or no verdict
    ("", None),
    ("   ", None),
    (None, None),
    ("I cannot decide.", None),
    ("Both debaters made reasonable points.", None),
    ("A or B", None),
    ("Neither A nor B is supported by the quotes.", None),
    ("The story is about a letter.", None),
    ("As an AI, I can't determine that.", None),
    ("C", None),
    # the article "a" is not answer A
    ("I think a lot depends on the quotes.", None),
    ("The answer is a paper lantern.", None),
    ("I believe a debater should quote more.", None),
    # more shapes seen from small instruction-tuned judges
    ("Debater B's argument is stronger.", 0.0),
    ("Debater A's quotes are more convincing.", 1.0),
    ("B) a paper lantern", 0.0),
    ("The correct answer is A: a tin whistle.", 1.0),
    ("I would choose answer B.", 0.0),
    ("Based on the verified quotes, B.", 0.0),
    ("Answer: it's A", 1.0),
    ("Debater A: 3 valid quotes. Debater B: 0 valid quotes. Answer: A", 1.0),
    ("A\nConfidence: 1", 1.0),
    ("B\nConfidence: 0.55", 0.45),
    ("Option B is correct with 60% probability", 0.4),
    ("I choose Debater B. I am fairly sure, around 70%.", 0.3),
    ("**Answer:** B | **Confidence:** 65%", 0.35),
    ("Answer: B\n\nReasoning: Debater A had 2 invalid quotes (50% of its quotes).", 0.0),
    ("A or B? I would say B.", 0.0),
    ("Not A.", None),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == (expected if expected is None else pytest.approx(expected))


def test_out_of_range_confidence_is_ignored():
    assert parse_verdict("A | 150%") == 1.0
    assert parse_verdict("Answer: B, confidence 7") == 0.0


def test_numbers_that_are_not_confidences_are_ignored():
    assert parse_verdict("A. 0 invalid quotes from A, 2 from B.") == 1.0
    assert parse_verdict("Answer: B. Debater A quoted line 3 wrongly.") == 0.0
