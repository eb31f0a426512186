"""QuALITY v1.0.1 JSONL: the hard subset, each gold answer against its best distractor.

QuALITY (Pang et al., 2022) has four options per question; debate needs two. Following the
debate papers (Michael et al. 2023, Khan et al. 2024) the gold answer debates the *best
distractor*, the wrong option the untimed validators found most tempting:

* a validator who answered correctly (``untimed_answer == gold_label``) votes for the option they
  named as the best distractor (``untimed_eval3_distractor``);
* a validator who answered wrongly votes for the option they chose;
* the option with the most votes wins; **ties go to the lowest option number**, so the choice is
  deterministic; votes for the gold option are ignored; with no votes at all the lowest-numbered
  wrong option is used (``meta["distractor_votes"]`` is then empty).

By default only hard questions (``difficult == 1``: fewer than half the speed validators were
right) are kept, as in the papers; ``difficult_only=False`` keeps all.

Splits: the official test file is unlabeled, so ``train`` comes from the train file and our ``val``
and ``test`` both come from the dev file, split 50/50 by a hash of ``article_id`` (one article never
straddles two splits). A file's role is read from its name (``…train…``, ``…dev…``, ``…test…``) or
given as ``file_split``; a name that says none is treated as dev (held-out), the safe choice for
data of unknown origin. ``val``/``test`` questions about stories that human debaters argued over
are dropped when ``exclude_titles`` names them (titles or a ``debates-readable.jsonl`` path), so
human-debate transcripts used for training never leak into evaluation.
"""

from __future__ import annotations

import html
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from debate_lightning.data.question import (
    SPLITS,
    DataError,
    Question,
    hash_split,
    iter_jsonl,
    stable_id,
    with_both_orders,
)

SOURCE = "quality"
NUM_OPTIONS = 4
FILE_SPLITS = ("train", "dev", "test")
DEV_SPLIT_WEIGHTS = {"val": 0.5, "test": 0.5}

# Tags that end a paragraph. <br> is not here: inside running text it is a hard wrap, not a break.
BLOCK_TAGS = frozenset(
    "p div h1 h2 h3 h4 h5 h6 li ul ol dl dt dd blockquote pre hr table tr section article header "
    "footer center body html".split()
)
SKIPPED_TAGS = frozenset(("head", "title", "script", "style"))  # never story text


class _TextExtractor(HTMLParser):
    """Collects text; block tags become paragraph breaks, <br> a single line break."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # unescapes &amp;, &#8212; … in the text
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED_TAGS:
            self.skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            # HTML whitespace (the source file's hard wraps included) is one space.
            self.parts.append(re.sub(r"\s+", " ", data))


def unwrap_lines(text: str) -> str:
    """Join hard-wrapped lines within each paragraph; keep blank-line paragraph breaks."""
    paragraphs = re.split(r"\n[ \t\xa0]*\n\s*", text.strip())
    joined = (re.sub(r"\s+", " ", p).strip() for p in paragraphs)
    return "\n\n".join(p for p in joined if p)


def strip_html(markup: str) -> str:
    """QuALITY's HTML article as plain paragraphs separated by blank lines.

    ``<p>``, ``<div>``, ``<h1..6>``, ``<li>``, ``<hr>`` end a paragraph; a ``<br/>`` between words
    is a hard wrap and becomes a space, while two in a row (or one next to a block tag) break the
    paragraph; entities are unescaped.

    >>> strip_html("<h1>T</h1><p>one<br/>two &amp;\\nthree</p><p>four</p>")
    'T\\n\\none two & three\\n\\nfour'
    """
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return unwrap_lines("".join(parser.parts))


def article_text(article: str) -> str:
    """Plain text of an article, whether it is HTML (v1.0.1) or already stripped (htmlstripped)."""
    if re.search(r"<\s*(html|p|br|div|h[1-6])\b", article, re.IGNORECASE):
        return strip_html(article)
    return unwrap_lines(html.unescape(article))


def normalise_title(title: str) -> str:
    """Case-, accent-, punctuation- and spacing-blind form of a story title, for matching."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def best_distractor(gold_label: int, validation: Iterable[Mapping[str, int]]) -> tuple[int, dict[int, int]]:
    """The best distractor (1-based) and the vote count of each option, by the rule above."""
    votes: Counter[int] = Counter()
    for v in validation:
        answer = v["untimed_answer"]
        vote = v.get("untimed_eval3_distractor") if answer == gold_label else answer
        if vote is not None and vote != gold_label:
            votes[vote] += 1
    if not votes:
        return min(label for label in range(1, NUM_OPTIONS + 1) if label != gold_label), {}
    top = max(votes.values())
    return min(label for label, n in votes.items() if n == top), dict(sorted(votes.items()))


def file_split_of(path: str | Path) -> str:
    """``train``, ``dev`` or ``test`` from a file name; ``dev`` when the name says none."""
    for name in FILE_SPLITS:
        if re.search(rf"(^|[._\-]){name}([._\-]|$)", Path(path).name.lower()):
            return name
    return "dev"


def read_titles(titles: Iterable[str] | str | Path | None) -> set[str]:
    """Normalised titles from a collection of titles or from a ``debates-readable.jsonl`` file."""
    if titles is None:
        return set()
    if isinstance(titles, (str, Path)):
        from debate_lightning.data.human_debates import story_titles

        titles = story_titles(titles)
    return {normalise_title(t) for t in titles}


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: tuple[Path, int, str]) -> Any:
    """``obj[key]`` checked for presence and type, else a DataError naming file, line, field."""
    path, line, prefix = where
    field = f"{prefix}.{key}" if prefix else key
    if key not in obj or obj[key] is None:
        raise DataError(path, line, field, "missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(path, line, field, f"expected {expected}, got {type(value).__name__} {value!r:.60}")
    return value


def _label(obj: Mapping[str, Any], key: str, where: tuple[Path, int, str]) -> int:
    value = _get(obj, key, int, where)
    if not 1 <= value <= NUM_OPTIONS:
        raise DataError(where[0], where[1], f"{where[2]}.{key}", f"{value} is out of range 1..{NUM_OPTIONS}")
    return value


def read_quality(
    path: str | Path,
    split: str | None = None,
    difficult_only: bool = True,
    exclude_titles: Iterable[str] | str | Path | None = None,
    seed: int = 0,
    both_orders: bool = False,
    file_split: str | None = None,
) -> list[Question]:
    """Questions from a QuALITY v1.0.1 JSONL file, gold answer vs best distractor.

    ``split`` keeps one of train/val/test (None: all). ``seed`` decides, per question, which
    side the gold answer is on (a hash, so about half are each way). Questions without a
    ``gold_label`` (the official test file) are skipped with a warning; a file with no labeled
    question at all is an error, since nothing in it can be debated.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    file_split = file_split or file_split_of(path)
    if file_split not in FILE_SPLITS:
        raise ValueError(f"unknown file_split {file_split!r}; expected one of {FILE_SPLITS}")
    excluded = read_titles(exclude_titles)
    questions: list[Question] = []
    labeled = unlabeled = 0
    for line, record in iter_jsonl(path):
        where = (path, line, "")
        article_id = str(_get(record, "article_id", (str, int), where))
        title = _get(record, "title", str, where)
        article = _get(record, "article", str, where)
        items = _get(record, "questions", list, where)
        story_split = file_split if file_split != "dev" else hash_split(article_id, DEV_SPLIT_WEIGHTS)
        keep_story = (split is None or split == story_split) and not (
            story_split != "train" and normalise_title(title) in excluded
        )
        story: str | None = None
        for i, item in enumerate(items):
            qwhere = (path, line, f"questions[{i}]")
            if not isinstance(item, dict):
                raise DataError(path, line, qwhere[2], f"expected an object, got {type(item).__name__}")
            parsed = _parse_question(item, qwhere)
            if parsed is None:
                unlabeled += 1
                continue
            labeled += 1
            if not keep_story or (difficult_only and not parsed["difficult"]):
                continue
            story = story if story is not None else article_text(article)
            questions.append(_to_question(record, parsed, story, story_split, seed, line))
    if unlabeled and not labeled:
        raise DataError(path, None, "gold_label", (
            f"none of its {unlabeled} questions has a gold label (the official QuALITY test split "
            "is unlabeled); load the dev file instead: its stories make up our val and test splits"))
    if unlabeled:
        warnings.warn(f"{path}: skipped {unlabeled} questions without gold_label", stacklevel=2)
    return with_both_orders(questions) if both_orders else questions


def _parse_question(item: Mapping[str, Any], where: tuple[Path, int, str]) -> dict[str, Any] | None:
    """The validated fields of one question, or None when it has no gold label."""
    path, line, prefix = where
    question = _get(item, "question", str, where)
    qid = str(_get(item, "question_unique_id", (str, int), where))
    options = _get(item, "options", list, where)
    if len(options) != NUM_OPTIONS:
        raise DataError(path, line, f"{prefix}.options", f"has {len(options)} options, expected {NUM_OPTIONS}")
    for j, option in enumerate(options):
        if not isinstance(option, str):
            raise DataError(path, line, f"{prefix}.options[{j}]", f"expected str, got {type(option).__name__}")
    if item.get("gold_label") is None:
        return None
    gold = _label(item, "gold_label", where)
    validation = _get(item, "validation", list, where)
    checked = []
    for k, v in enumerate(validation):
        vwhere = (path, line, f"{prefix}.validation[{k}]")
        if not isinstance(v, dict):
            raise DataError(path, line, vwhere[2], f"expected an object, got {type(v).__name__}")
        answer = _label(v, "untimed_answer", vwhere)
        named = _label(v, "untimed_eval3_distractor", vwhere) if answer == gold else None
        checked.append({"untimed_answer": answer, "untimed_eval3_distractor": named})
    distractor, votes = best_distractor(gold, checked)
    if "difficult" not in item:
        raise DataError(path, line, f"{prefix}.difficult", "missing")
    difficult = item["difficult"]
    if difficult not in (0, 1, True, False):
        raise DataError(path, line, f"{prefix}.difficult", f"expected 0 or 1, got {difficult!r}")
    return {"question": question.strip(), "qid": qid, "options": [o.strip() for o in options],
            "gold": gold, "distractor": distractor, "votes": votes, "difficult": bool(difficult),
            "writer_label": item.get("writer_label")}


def _to_question(record: Mapping[str, Any], q: Mapping[str, Any], story: str, split: str, seed: int,
                 line: int) -> Question:
    correct, wrong = q["options"][q["gold"] - 1], q["options"][q["distractor"] - 1]
    correct_index = int(stable_id(SOURCE, "order", seed, q["qid"]), 16) % 2
    return Question(
        story=story, story_title=record["title"].strip(), question=q["question"],
        positions=(correct, wrong) if correct_index == 0 else (wrong, correct),
        correct_index=correct_index, question_id=q["qid"], story_id=str(record["article_id"]),
        split=split, source=SOURCE,
        meta={"gold_label": q["gold"], "distractor_label": q["distractor"],
              "distractor_votes": {str(k): n for k, n in q["votes"].items()}, "difficult": q["difficult"],
              "writer_label": q["writer_label"], "set_unique_id": record.get("set_unique_id"),
              "author": record.get("author"), "article_source": record.get("source"), "line": line},
    )
