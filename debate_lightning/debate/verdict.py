"""Parse a judge's verdict from text: the fallback for models that return no log-probabilities.

Understands a bare letter ("A"), a labelled answer ("Answer: B", "I choose Debater A"), and a
stated confidence ("A | 80%", "B (confidence: 0.7)"). Returns P(A), or None when no verdict
can be found, so the caller records a failed judgement instead of guessing.
"""

from __future__ import annotations

import re

_CONF = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%|\b(0?\.\d+|1\.0+|0|1)\b(?!\s*%)")
_LETTER = re.compile(
    r"(?:answer|verdict|choose|choice|winner|pick|select|correct(?: answer)? is|debater|consultant)\W{0,3}\s*\(?([AB])\)?\b"
    r"|^\W*\(?([AB])\)?(?:\W|$)",
    re.IGNORECASE | re.MULTILINE,
)


def parse_verdict(text: str) -> float | None:
    """P(A) from a verdict text, or None if the text names no answer."""
    if not text or not text.strip():
        return None
    m = _LETTER.search(text)
    if m is None:
        return None
    letter = (m.group(1) or m.group(2)).upper()
    confidence = _confidence(text[m.end() :])
    p = 1.0 if confidence is None else confidence
    return p if letter == "A" else 1.0 - p


def _confidence(rest: str) -> float | None:
    """A confidence stated after the letter, as a probability in [0.5, 1]; None if absent."""
    m = _CONF.search(rest[:60])
    if m is None:
        return None
    if m.group(1) is not None:
        value = float(m.group(1)) / 100.0
    else:
        value = float(m.group(2))
    if not 0.0 <= value <= 1.0:
        return None
    return value
