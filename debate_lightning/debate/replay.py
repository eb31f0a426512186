"""Debaters that speak recorded speeches instead of generating: human debates and earlier runs.

Two config backends (``models: {h: {backend: ...}}``) become a ``ReplayDebater`` here:

- ``human_replay`` (``path: debates-readable.jsonl``, the NYU human debates the
  ``human_debates`` data source reads): side ``s`` of a round speaks, at its k-th speech, the
  k-th speech the human debater arguing the same answer made in the first recorded debate of that
  question (file order). A speech the data does not hold is never made up: the round is refused
  (its speech error starts with ``REFUSED``), is not judged, and is counted by the report.
- ``offline`` (``path: RUN_DIR``, ``debater: NAME``): one debater's speeches from an
  earlier tournament's ``RUN_DIR/rounds.jsonl``, matched on question (uid: the question and its
  side order), side and format, so it can face a new opponent. A round the earlier run did not
  play is an ``OfflineReplayMismatch`` naming question, side and format.

Why here and not in ``models/``: a backend there sees only chats, and a chat does not carry the
round's question, side and speech number (parsing them out of a prompt would break with every
prompt set). A debater sees ``SpeechRequest``s, which do. The model registry lists both backend
names so a judge or a policy naming one gets a clear error instead of "unknown backend".
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debate_lightning.data.human_debates import HumanDebate, read_human_debates
from debate_lightning.data.question import DataError, Question
from debate_lightning.debate.agents import Debater, SpeechRequest, _speech
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import Generation, Generator, SamplingParams
from debate_lightning.models.spec import ModelSpec

REPLAY_BACKENDS = ("human_replay", "offline")
REFUSED = "refused by human_replay:"  # the start of every refused round's error (the report counts them)
ROUNDS_FILE = "rounds.jsonl"


class OfflineReplayMismatch(ValueError):
    """The earlier run has no speech for a round the new tournament plays."""


def side_name(side: int) -> str:
    return "AB"[side]


def round_name(question: Question, side: int, fmt: Format) -> str:
    """How errors name a round: question uid, side and format."""
    return f"question {question.uid} ({question.question[:60]!r}), side {side_name(side)}, format {fmt.name}"


def _text_key(title: str, question: str, answers: Iterable[str]) -> tuple:
    return (title.strip(), question.strip(), tuple(sorted(a.strip() for a in answers)))


class HumanSpeeches:
    """The recorded human speeches of a debates-readable.jsonl, per question and argued answer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"human_replay: human debates file {self.path} does not exist")
        self.debates: dict[str, list[HumanDebate]] = {}  # question_id -> sessions of its first debate
        self._by_text: dict[tuple, str] = {}
        for d in read_human_debates(self.path):
            sessions = self.debates.setdefault(d.question_id, [])
            if not sessions or sessions[0].debate_id == d.debate_id:
                sessions.append(d)
            self._by_text.setdefault(_text_key(d.story_title, d.question, d.answers), d.question_id)

    def debate_of(self, question: Question) -> HumanDebate | None:
        """The first session of the question's first recorded debate (by id, else by its text)."""
        qid = question.question_id if question.question_id in self.debates else \
            self._by_text.get(_text_key(question.story_title, question.question, question.positions))
        return self.debates[qid][0] if qid else None

    def speech(self, question: Question, side: int, number: int) -> str | None:
        """The ``number``-th (0-based) recorded speech for ``question.positions[side]``, or None."""
        d = self.debate_of(question)
        if d is None:
            return None
        answer = question.positions[side].strip()
        said = [t.text for t in d.turns if t.is_debater and t.index is not None and d.answers[t.index].strip() == answer]
        return said[number] if number < len(said) else None

    def missing(self, question: Question, side: int, number: int, fmt: Format) -> str:
        d = self.debate_of(question)
        where = round_name(question, side, fmt)
        if d is None:
            return f"{REFUSED} {self.path} holds no debate of {where}"
        answer = question.positions[side]
        n = sum(1 for t in d.turns if t.is_debater and t.index is not None and d.answers[t.index].strip() == answer.strip())
        return (f"{REFUSED} {self.path} debate {d.debate_id} (line {d.line}) has {n} speech(es) for answer "
                f"{answer[:60]!r}; the round ({where}) asks for speech {number + 1}")


class RunSpeeches:
    """One debater's speeches in an earlier run, per (question uid, side, format name)."""

    def __init__(self, run_dir: str | Path, debater: str | None = None):
        self.dir = Path(run_dir)
        path = self.dir / ROUNDS_FILE if self.dir.is_dir() else self.dir
        if not path.is_file():
            raise FileNotFoundError(f"offline replay: no earlier run at {run_dir} (expected {self.dir / ROUNDS_FILE})")
        self.path = path
        rounds = _latest_rounds(path)
        names = sorted({n for r in rounds for n in r["debaters"] if n})
        if debater is None:
            if len(names) != 1:
                raise ValueError(f"offline replay of {path}: say which debater to replay with debater: NAME; "
                                 f"the run has {names}")
            debater = names[0]
        if debater not in names:
            raise ValueError(f"offline replay: debater {debater!r} does not speak in {path}; it has {names}")
        self.debater = debater
        self.speeches: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for r in rounds:
            fmt = Format(**r["format"])
            for side in fmt.sides:
                if r["debaters"][side] != debater:
                    continue
                said = [s for s in r["speeches"] if s["side"] == side]
                if any(s.get("error") for s in said):
                    continue
                # The first round in file order wins (repeats and other opponents come later).
                self.speeches.setdefault((r["question"]["uid"], side, fmt.name), said)

    def speech(self, question: Question, side: int, number: int, fmt: Format) -> dict[str, Any]:
        said = self.speeches.get((question.uid, side, fmt.name))
        where = round_name(question, side, fmt)
        if said is None:
            raise OfflineReplayMismatch(f"offline replay of {self.debater!r} from {self.path}: the earlier run has no "
                                        f"round for {where}")
        if number >= len(said):
            raise OfflineReplayMismatch(f"offline replay of {self.debater!r} from {self.path}: the earlier run has "
                                        f"{len(said)} speech(es) for {where}; this round asks for speech {number + 1}")
        return said[number]


def _latest_rounds(path: Path) -> list[dict[str, Any]]:
    """Raw round dicts, each round id once (its last attempt), in first-seen order; a kill's
    unterminated last line is skipped, any other bad line is an error naming file and line."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    by_id: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            ok = isinstance(d, dict) and all(k in d for k in ("round_id", "question", "format", "debaters", "speeches"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            if n == len(lines) and not raw.endswith(b"\n"):
                continue
            raise DataError(path, n, None, "not a round result (needs round_id, question, format, debaters, speeches)")
        by_id[d["round_id"]] = d
    return list(by_id.values())


class _NoGenerator(Generator):
    """Stands in for a generator on a replay debater: it never generates or scores."""

    def __init__(self, name: str, backend: str):
        self.name, self.backend = name, backend

    def generate(self, chats, params):
        raise ValueError(f"model {self.name!r} ({self.backend}) replays recorded speeches; it does not generate")

    def score(self, chats, continuations):
        raise ValueError(f"model {self.name!r} ({self.backend}) replays recorded speeches; it cannot judge")


@dataclass
class ReplayDebater(Debater):
    """Speaks recorded speeches, byte for byte; ``source`` is a HumanSpeeches or RunSpeeches."""

    source: HumanSpeeches | RunSpeeches | None = None

    def speak(self, requests: Sequence[SpeechRequest]) -> list:
        out = []
        for r in requests:
            start = time.perf_counter()
            q, fmt = r.transcript.question, r.transcript.format
            number = sum(1 for s in r.transcript.speeches if s.side == r.side)
            if isinstance(self.source, HumanSpeeches):
                text = self.source.speech(q, r.side, number)
                gen = Generation(text, num_tokens=0) if text is not None else \
                    Generation("", finished=False, error=self.source.missing(q, r.side, number, fmt))
            else:
                assert self.source is not None
                rec = self.source.speech(q, r.side, number, fmt)
                gen = Generation(rec["text"], num_tokens=rec.get("num_tokens", 0), finished=rec.get("finished", True))
            out.append(_speech(r, gen, time.perf_counter() - start))
        return out


def replay_debater(name: str, spec: ModelSpec, model_key: str, params: SamplingParams | None = None) -> ReplayDebater:
    """The debater ``name`` over model ``model_key`` of a replay backend (``REPLAY_BACKENDS``)."""
    if spec.backend == "human_replay":
        source: HumanSpeeches | RunSpeeches = HumanSpeeches(spec.path)
    elif spec.backend == "offline":
        debater = getattr(spec, "debater", None) or spec.options.get("debater")
        unknown = sorted(set(spec.options) - {"debater"})
        if unknown:
            raise ValueError(f"models.{model_key}: unknown offline option(s) {unknown}; known: ['debater']")
        source = RunSpeeches(spec.path, debater)
    else:
        raise ValueError(f"models.{model_key}: backend {spec.backend!r} is not a replay backend {REPLAY_BACKENDS}")
    return ReplayDebater(name, _NoGenerator(model_key, spec.backend), params or SamplingParams(), source=source)


def human_judge_accuracy(path: str | Path, question_ids: Iterable[str]) -> dict[str, Any]:
    """The human judges' accuracy recorded in a debates file, on the replayed debates of
    ``question_ids``: ``isJudgeCorrect`` of every session of those debates that has one, and
    the mean final probability the judges gave the correct answer (where both are known)."""
    book = HumanSpeeches(path)
    binary, prob, questions = [], [], 0
    for qid in dict.fromkeys(question_ids):
        sessions = book.debates.get(qid, [])
        questions += bool(sessions)
        correct = next((s.answers[s.correct_index] for s in sessions if s.correct_index is not None), None)
        for s in sessions:
            if s.is_judge_correct is not None:
                binary.append(float(s.is_judge_correct))
            final = s.final_probabilities
            if final is not None and correct is not None:
                prob.append(final[s.answers.index(correct)])
    return {"questions": questions, "sessions": len(binary), "binary": _mean(binary), "prob": _mean(prob),
            "prob_sessions": len(prob)}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
