"""``<quote>`` spans in speeches, checked against the story.

A quote is valid if it appears in the story exactly, else after normalisation (case, whitespace,
punctuation and quote-mark styles folded), else fuzzily: rapidfuzz's ``partial_ratio`` of the
normalised quote against the normalised story is at least ``fuzzy_threshold`` (0-100). Fuzzy
matching forgives the small slips models make when copying, never invented sentences.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from rapidfuzz import fuzz

QUOTE_RE = re.compile(r"<quote>(.*?)</quote>", re.DOTALL)
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


@dataclass
class Quote:
    text: str
    valid: bool
    match: str  # "exact", "normalized", "fuzzy" or "none"
    score: float

    @property
    def words(self) -> int:
        return len(self.text.split())

    def to_dict(self) -> dict:
        return asdict(self)


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


class QuoteChecker:
    """Checks quotes against one story; normalises the story once."""

    def __init__(self, story: str, fuzzy_threshold: float = 90.0, min_fuzzy_words: int = 3):
        self.story = story
        self.norm_story = normalize(story)
        self.fuzzy_threshold = fuzzy_threshold
        self.min_fuzzy_words = min_fuzzy_words

    def check(self, quote: str) -> Quote:
        text = quote.strip()
        if not text:
            return Quote(text, False, "none", 0.0)
        if text in self.story:
            return Quote(text, True, "exact", 100.0)
        norm = normalize(text)
        if norm and norm in self.norm_story:
            return Quote(text, True, "normalized", 100.0)
        score = fuzz.partial_ratio(norm, self.norm_story) if norm else 0.0
        # Very short quotes match something almost anywhere; only longer ones may match fuzzily.
        if len(norm.split()) >= self.min_fuzzy_words and score >= self.fuzzy_threshold:
            return Quote(text, True, "fuzzy", float(score))
        return Quote(text, False, "none", float(score))

    def check_speech(self, speech: str) -> list[Quote]:
        return [self.check(q) for q in QUOTE_RE.findall(speech)]


def mark_quotes(speech: str, quotes: list[Quote]) -> str:
    """The speech as the judge sees it: unverified quotes become ``<invalid_quote>`` spans."""
    verdicts = iter(quotes)

    def replace(m: re.Match) -> str:
        q = next(verdicts, None)
        tag = "quote" if q is not None and q.valid else "invalid_quote"
        return f"<{tag}>{m.group(1)}</{tag}>"

    return QUOTE_RE.sub(replace, speech)


def quote_stats(quotes: list[Quote]) -> dict:
    valid = [q for q in quotes if q.valid]
    return {
        "num_quotes": len(quotes),
        "num_valid": len(valid),
        "valid_words": sum(q.words for q in valid),
        "invalid_words": sum(q.words for q in quotes if not q.valid),
    }
