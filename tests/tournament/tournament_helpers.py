"""Hand-made round results, scripted agents and scripted tournament configs for tournament tests.

Imported by the tests as `tournament_helpers` (conftest.py puts this directory on sys.path)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from debate_lightning.data.question import Question  # noqa: E402
from debate_lightning.debate.engine import RoundResult  # noqa: E402
from debate_lightning.debate.formats import Format  # noqa: E402
from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"


def question(qid: str = "q1", correct_index: int = 0) -> Question:
    q = Question(
        story="Ann found the key under the mat. Bob was at the station.",
        story_title="t",
        question="Who found the key?",
        positions=("Ann", "Bob"),
        correct_index=0,
        question_id=qid,
        story_id="s1",
        split="val",
        source="synthetic",
    )
    return q if correct_index == 0 else q.swapped()


def make_result(
    qid: str,
    correct_index: int,
    p_a: float | None,
    debaters: Sequence[str] = ("x", "y"),
    kind: str = "debate",
    consultant_side: int = 0,
    quotes: Sequence[Sequence[tuple[str, bool]]] = (),
    round_id: str | None = None,
    status: str = "ok",
    repeat: int = 0,
) -> RoundResult:
    """A judged round built by hand. ``quotes[k]`` lists (text, valid) for speech k, whose side
    alternates 0, 1, 0, ... (consultancy: the consultant's side)."""
    fmt = Format(kind=kind, num_speeches=1, consultant_side=consultant_side)
    speeches = []
    for k, qs in enumerate(quotes):
        side = consultant_side if kind == "consultancy" else k % 2
        speeches.append(
            {"side": side, "step": k, "text": " ".join(f"<quote>{t}</quote>" for t, _ in qs), "num_tokens": 5,
             "finished": True, "seconds": 0.0, "candidates": [], "error": None,
             "quotes": [{"text": t, "valid": v, "match": "exact" if v else "none", "score": 100.0 if v else 0.0} for t, v in qs]}
        )
    winner = None if p_a is None else (0 if p_a >= 0.5 else 1)
    q = question(qid, correct_index)
    return RoundResult(
        round_id=round_id or f"{qid}-{correct_index}-{kind}{consultant_side}-{'-'.join(debaters)}-{repeat}",
        question=q.to_dict(),
        format={"kind": kind, "num_speeches": 1, "simultaneous": False, "consultant_side": consultant_side,
                "prompt_set": None, "word_limit": 100},
        debaters=list(debaters),
        judge="j",
        speeches=speeches,
        p_a=p_a,
        p_a_orders=[] if p_a is None else [p_a],
        winner=winner,
        correct_index=q.correct_index,
        judge_correct=None if winner is None else winner == q.correct_index,
        status=status,
        repeat=repeat,
    )


class CyclingGenerator(Generator):
    """Speech ``texts[k % len(texts)]`` for the k-th chat it is ever asked for (across calls)."""

    def __init__(self, texts: Sequence[str], name: str = "cycle"):
        self.texts, self.name, self.k = list(texts), name, 0
        self.calls: list[int] = []

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        self.calls.append(len(chats))
        out = []
        for _ in chats:
            out.append(Generation(self.texts[self.k % len(self.texts)], num_tokens=1))
            self.k += 1
        return out


class KeywordJudge(Generator):
    """P(A) = clip(0.5 + sum of ``weights[(speaker letter, word)]`` over the judge's transcript).

    Reads "Debater A: word" entries off the rendered judge chat; use with ``both_orders=False``.
    """

    def __init__(self, weights: dict[tuple[str, str], float], name: str = "keyword-judge"):
        self.weights, self.name = weights, name
        self.calls: list[int] = []

    def generate(self, chats, params):
        raise NotImplementedError

    def p_a(self, chat: Chat) -> float:
        text = chat[-1]["content"]
        p = 0.5
        for letter, word in re.findall(r"Debater ([AB]): (\w+)", text):
            p += self.weights.get((letter, word), 0.0)
        return min(max(p, 0.01), 0.99)

    def choice_logprobs(self, chats, choices):
        self.calls.append(len(chats))
        return [[math.log(self.p_a(c)), math.log(1 - self.p_a(c))] for c in chats]


def scripted_config(path: Path, **overrides) -> Path:
    """A small round-robin tournament on scripted models (random speeches and judge)."""
    cfg = {
        "data": {"source": "synthetic", "limit": 3, "both_orders": True},
        "models": {"r": {"backend": "random"}},
        "debaters": [{"name": "a", "model": "r"}, {"name": "b", "model": "r"}],
        "judge": {"model": "r"},
        "formats": [{"kind": "debate", "num_speeches": 1}],
        "schedule": {"kind": "round_robin"},
        "rounds_in_flight": 2,
    }
    for k, v in overrides.items():
        cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))
    return path

