"""Speech formats: who speaks when, and who sees whose speeches.

A format is a list of *steps*; every step is a set of sides (0 = position A, 1 = position B)
that speak at the same time, each seeing only the speeches of earlier steps that it may see.
The engine batches every speech of a step, across every active round, into one model call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

Kind = Literal["debate", "consultancy", "double_consultancy", "empty", "open_debate"]
KINDS: tuple[str, ...] = ("debate", "consultancy", "double_consultancy", "empty", "open_debate")


@dataclass(frozen=True)
class Scratchpad:
    """Private reasoning before speaking (``formats[].scratchpad``).

    Attributes:
        debater: each debater writes notes before each speech; only its own speech chat shows
            them (never the opponent's or the judge's), and they are kept on the speech record.
        judge: the judge reasons in text before its verdict (once per presentation order); P(A)
            is then scored teacher-forced after that reasoning.
        max_new_tokens: the token budget of each note or reasoning.
    """

    debater: bool = False
    judge: bool = False
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"format scratchpad.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def parse(cls, value: Any) -> Scratchpad | None:
        """A ``Scratchpad`` from itself, a mapping (a config or a rounds.jsonl line) or None."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"format scratchpad: expected a mapping like {{debater: true, judge: true}}, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"format scratchpad: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**value)


@dataclass(frozen=True)
class Format:
    """How a round is played.

    Attributes:
        kind: ``debate`` (two debaters), ``consultancy`` (one advocate for ``consultant_side``),
            ``double_consultancy`` (one advocate per side, neither sees the other; the judge sees
            both), ``empty`` (no speeches: the judge sees only the question), or ``open_debate``:
            two debaters first state, blind to each other, which answer they will defend (step 0,
            a choice statement such as "I defend answer A"), then argue for their own choice in
            the order of a debate, even when both chose the same answer (``debate/open_debate.py``).
        num_speeches: speeches per side (in an open debate, after the choice statement).
        simultaneous: in a debate, both sides speak each step without seeing the other's speech
            of that step; otherwise side A speaks, then B, alternately.
        consultant_side: for consultancy, the position index (0 or 1) the consultant argues for.
        prompt_set: built-in name or YAML path; defaults to the kind's own set.
        word_limit: the target length named in the prompt.
        scratchpad: private notes before speeches and/or judge reasoning before the verdict;
            null (the default) for none.
    """

    kind: Kind = "debate"
    num_speeches: int = 2
    simultaneous: bool = False
    consultant_side: int = 0
    prompt_set: str | None = None
    word_limit: int = 100
    scratchpad: Scratchpad | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scratchpad", Scratchpad.parse(self.scratchpad))
        if self.kind not in KINDS:
            raise ValueError(f"unknown format kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.num_speeches < 0 or (self.num_speeches == 0 and self.kind != "empty"):
            raise ValueError(f"format {self.kind}: num_speeches must be >= 1, got {self.num_speeches}")
        if self.consultant_side not in (0, 1):
            raise ValueError(f"consultant_side must be 0 or 1, got {self.consultant_side}")

    @property
    def name(self) -> str:
        if self.kind == "consultancy":
            name = f"consultancy{self.consultant_side}"
        elif self.kind in ("debate", "open_debate") and self.simultaneous:
            name = f"{self.kind}_simultaneous"
        else:
            name = self.kind
        # A scratchpad changes the game: its rounds get ids and report rows of their own.
        pad = self.scratchpad
        if pad and (pad.debater or pad.judge):
            name += "_scratchpad" + ("_debater" if pad.debater else "") + ("_judge" if pad.judge else "")
        return name

    @property
    def family(self) -> str:
        """Rounds of one family are compared in reports (both consultancy sides are one family)."""
        return self.kind

    @property
    def prompts(self) -> str:
        if self.prompt_set:
            return self.prompt_set
        return {
            "debate": "debate", "consultancy": "consultancy", "double_consultancy": "consultancy",
            "open_debate": "open_debate",
        }.get(self.kind, "empty")

    @property
    def sides(self) -> tuple[int, ...]:
        """The sides that speak in this format."""
        return {
            "debate": (0, 1), "double_consultancy": (0, 1), "open_debate": (0, 1), "consultancy": (self.consultant_side,),
        }.get(self.kind, ())

    def steps(self) -> list[tuple[int, ...]]:
        """The speaking order: one tuple of simultaneous speakers per step."""
        if self.kind == "empty":
            return []
        if self.kind == "consultancy":
            return [(self.consultant_side,)] * self.num_speeches
        if self.kind == "open_debate":  # the blind choice statements first, then the debate itself
            if self.simultaneous:
                return [(0, 1)] * (1 + self.num_speeches)
            return [(0, 1), *[(side,) for _ in range(self.num_speeches) for side in (0, 1)]]
        if self.kind == "double_consultancy" or self.simultaneous:
            return [(0, 1)] * self.num_speeches
        return [(side,) for _ in range(self.num_speeches) for side in (0, 1)]

    def sees(self, viewer: int, speaker: int) -> bool:
        """Whether side ``viewer`` gets to see speeches by side ``speaker``."""
        return viewer == speaker or self.kind in ("debate", "open_debate")
