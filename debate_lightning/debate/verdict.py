"""Parse a judge's verdict from text: the fallback for models that return no log-probabilities.

``parse_verdict(text)`` returns P(A), or None when the text names no single answer, so the caller
records a failed judgement (a resume retries it) instead of guessing. It reads, in this order:

1. an explicit probability for each side: ``P(A) = 0.7``, ``A: 60%, B: 40%``;
2. a labelled decision: ``Answer: B``, ``Final answer: (A)``, ``I choose Debater A``,
   ``<answer>B</answer>``, ``Verdict: Debater A wins``; the LAST one counts, since judges that
   reason first end with their decision;
3. a claim: ``I believe Debater A is correct``, ``B is more convincing``, ``Consultant A wins``
   (negated claims such as ``A is not correct`` or ``neither A nor B`` do not count);
4. a bare letter opening the text: ``A``, ``**B**``, ``A | 80%``, ``B.``;
5. a capital letter closing it: ``Based on the verified quotes, B.``

Letters are capitals, except a lowercase one that cannot be the article (``answer: a`` counts,
``the answer is a lantern`` does not).

A stated confidence is the probability of the chosen answer: labelled anywhere (``Confidence:
80%``, ``I am 0.7 sure``) or right after the letter (``A | 80%``, ``B (70% confident)``,
``A, 8/10``). Percentages, decimals in [0, 1] and ``x/10`` are understood; a value outside [0, 1]
is ignored and the verdict counts as certain. Text naming both letters as equally final
(``A or B``) is no verdict.
"""

from __future__ import annotations

import re

_ROLE = r"(?:debater|consultant|option|answer|position|choice|side)?\s*"
# A capital letter; a lowercase one only where it cannot be the article ("answer: a", not "is a lantern").
_BARE = r"[\(\[\"']?(?:(?-i:([AB]))|([ab])(?=[\)\]\"']?\s*(?:$|[.,;:!?|\n])))[\)\]\"']?"
_LETTER = _BARE + r"(?![\w'])"
# "Debater A's argument is stronger"
_LETTER_POSS = _BARE + r"(?:(?![\w'])|'s\s+(?:\w+\s+)?(?:argument|case|answer|position|reasoning|evidence|quotes?|points?)\b)"
_NEGATION = re.compile(r"(?:\bneither\b|\bnor\b|\bnot\b|n't\b|\bno\b|\bor\b)\W*(?:\w+\W+){0,2}$", re.IGNORECASE)

# 2. labelled decisions
_LABELLED = re.compile(
    r"(?:final\s+answer|answer|verdict|decision|judgment|judgement|winner|my\s+choice|choice"
    r"|i\s+(?:choose|chose|pick|select|vote\s+for|side\s+with|go\s+with|favou?r)"
    r"|correct\s+(?:answer|option|choice)\s+is|the\s+answer\s+is|answer\s+is)"
    r"\s*(?:is\b)?\s*[:=\-–—]?\s*(?:that\s+)?(?:the\s+)?" + _ROLE + _LETTER,
    re.IGNORECASE,
)
_TAGGED = re.compile(r"<(?:answer|verdict|choice)>\s*" + _ROLE + _LETTER + r"\s*</", re.IGNORECASE)

# 3. claims about one side
_CLAIM = re.compile(
    r"(?:\bdebater|\bconsultant|\boption|\banswer|\bposition|\bside)?\s*" + r"\b" + _LETTER_POSS
    + r"\s+(?:is|are|was|were|seems|seem|appears|appear|argues|argued|made|makes|has|had|gave|gives|presented|presents)\s+"
    r"(?:(?:clearly|more|most|much|far|likely|probably|definitely|also|the|a|better|stronger|overall)\s+){0,3}"
    r"(?:correct|right|true|convincing|persuasive|winner|better|stronger|more\s+convincing|accurate)"
    r"|(?:\bdebater|\bconsultant|\boption|\banswer|\bposition|\bside)?\s*\b" + _LETTER + r"\s+wins\b"
    r"|(?:believe|think|conclude|agree\s+with|trust|side\s+with)\s+(?:that\s+)?(?:the\s+)?" + _ROLE + _LETTER,
    re.IGNORECASE,
)
# 5. a capital letter closing the text ("Based on the quotes, B.")
_CLOSING = re.compile(r"(?:^|[\s:,(\[])(?-i:([AB]))[\)\]]?\W{0,3}$")
# 4. a bare letter opening the text (not "A or B")
_OPENING = re.compile(r"^\W*" + _ROLE + _LETTER + r"(?!\s+(?:or|and|nor|vs\.?|versus)\b)(?=\W|$)", re.IGNORECASE)

# 1. explicit probabilities
_NUM = r"(\d{1,3}(?:\.\d+)?\s*%|\d*\.\d+|[01](?:\.0+)?(?!\d))"
_P_OF_A = re.compile(r"\bP\s*\(\s*(?:debater\s+)?([AB])\s*\)\s*[:=≈~]\s*" + _NUM, re.IGNORECASE)
_PROB_OF = re.compile(
    r"probability\s+(?:that\s+|of\s+|for\s+)?(?:the\s+)?" + _ROLE + r"([AB])\b(?:\s+is\s+(?:correct|right))?\s*[:=]?\s*(?:is\s+)?" + _NUM,
    re.IGNORECASE,
)
_PAIR = re.compile(r"(?:^|[\s,;(])" + _ROLE + r"([AB])\s*[:=]\s*(\d{1,3}(?:\.\d+)?)\s*%", re.IGNORECASE | re.MULTILINE)

# confidence
_VALUE = r"(\d{1,3}(?:\.\d+)?)\s*%|(\d+(?:\.\d+)?)\s*/\s*(10|100)\b|(?<![\d.])(0?\.\d+|1\.0+|[01])(?![\d.%/])"
_CONF_LABELLED = re.compile(
    r"(?:confidence|confident|certainty|certain|sure|probability|likelihood|credence)\s*(?:level|score)?\W{0,3}(?:is|of|at)?\W{0,3}(?:about|around|roughly|approximately|~)?\s*(?:" + _VALUE + ")",
    re.IGNORECASE,
)
_CONF_BEFORE = re.compile(
    r"(?:" + _VALUE + r")\s*(?:confident|confidence|sure|certain|probability|likelihood|chance)", re.IGNORECASE
)
_CONF_NEAR = re.compile(_VALUE)


def parse_verdict(text: str | None) -> float | None:
    """P(A) from a verdict text, or None if the text names no single answer."""
    if not text or not text.strip():
        return None
    clean = re.sub(r"[*_`#]+", "", text).strip()
    explicit = _explicit_probability(clean)
    if explicit is not None:
        return explicit
    found = _decision(clean)
    if found is None:
        return None
    letter, end = found
    confidence = _confidence(clean, end)
    p = 1.0 if confidence is None else confidence
    return p if letter == "A" else 1.0 - p


def _decision(text: str) -> tuple[str, int] | None:
    """(letter, end offset) of the decisive statement, by the tiers in the module docstring."""
    for pattern in (_TAGGED, _LABELLED, _CLAIM):
        hits = [m for m in pattern.finditer(text) if not _negated(text, m)]
        if hits:
            m = hits[-1]
            return _group(m).upper(), m.end()
    for pattern in (_OPENING, _CLOSING):
        m = pattern.search(text)
        if m is not None and not _negated(text, m):
            return _group(m).upper(), m.end()
    return None


def _group(m: re.Match) -> str:
    return next(g for g in m.groups() if g)


def _negated(text: str, m: re.Match) -> bool:
    """A negation or alternative just before the letter ("not A", "neither A nor B", "A or B")."""
    letter_start = next(m.start(i) for i in range(1, (m.lastindex or 0) + 1) if m.group(i))
    before = re.split(r"[.;:!?,\n]", text[max(0, letter_start - 40) : letter_start])[-1]  # this clause only
    after = text[m.end() : m.end() + 12]
    if _NEGATION.search(before):
        return True
    if re.match(r"\s*(?:or|nor|vs\.?|versus)\s", after, re.IGNORECASE):
        return True
    # "A is not correct": the claim's own words carry no negation, but check the verb phrase
    return bool(re.search(r"\b(?:not|n't|never)\b", m.group(0), re.IGNORECASE))


def _explicit_probability(text: str) -> float | None:
    """P(A) stated as a number: "P(A) = 0.7", "probability A is correct: 70%", "A: 60%, B: 40%"."""
    pairs = {m.group(1).upper(): float(m.group(2)) / 100 for m in _PAIR.finditer(text)}
    if len(pairs) == 2 and all(0 <= v <= 1 for v in pairs.values()) and sum(pairs.values()) > 0:
        return pairs["A"] / (pairs["A"] + pairs["B"])
    for pattern in (_P_OF_A, _PROB_OF):
        hits = list(pattern.finditer(text))
        if hits:
            m = hits[-1]
            value = _number(m.group(2))
            if value is not None:
                return value if m.group(1).upper() == "A" else 1.0 - value
    return None


def _number(s: str) -> float | None:
    s = s.strip()
    value = float(s[:-1].strip()) / 100 if s.endswith("%") else float(s)
    return value if 0.0 <= value <= 1.0 else None


def _value(m: re.Match, offset: int = 1) -> float | None:
    pct, num, den, dec = (m.group(offset + i) for i in range(4))
    if pct is not None:
        value = float(pct) / 100
    elif num is not None:
        value = float(num) / float(den)
    else:
        value = float(dec)
    return value if 0.0 <= value <= 1.0 else None


def _confidence(text: str, end: int) -> float | None:
    """The stated probability of the chosen answer: labelled anywhere, else just after the letter."""
    for pattern in (_CONF_LABELLED, _CONF_BEFORE):
        hits = [v for m in pattern.finditer(text) if (v := _value(m)) is not None]
        if hits:
            return hits[-1]
    near = text[end : end + 40]
    m = _CONF_NEAR.search(near)
    # only a percentage, a fraction or a decimal right after the letter: "A. 0 invalid quotes" is no confidence
    if m is not None and m.group(4) not in ("0", "1") and not re.search(r"[A-Za-z]{3,}", near[: m.start()]):
        return _value(m)
    return None
