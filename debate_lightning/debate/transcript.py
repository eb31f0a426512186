"""What each participant of a round has seen, and how it is rendered into chat messages.

Side 0 argues for ``positions[0]`` (answer A) and side 1 for ``positions[1]`` (answer B).
Debaters see the story and the speeches their format lets them see; the judge sees the question,
the two answers and the speeches, with every quote marked valid or invalid, never the story.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from debate_lightning.data.question import Question
from debate_lightning.debate.formats import Format
from debate_lightning.debate.quotes import Quote, mark_quotes
from debate_lightning.models.base import Chat
from debate_lightning.prompts.render import PromptSet

NO_SPEECHES = "(no speeches yet)"


def role_name(fmt: Format, side: int, swap: bool = False) -> str:
    """The name a participant is called by in prompts: Debater A/B or Consultant (A/B)."""
    letter = "AB"[side ^ int(swap)]
    if fmt.kind == "consultancy":
        return "Consultant"
    if fmt.kind == "double_consultancy":
        return f"Consultant {letter}"
    return f"Debater {letter}"


@dataclass
class Speech:
    """One speech in a round, with its quote checks and (for best-of-N) the losing candidates."""

    side: int
    step: int
    text: str
    quotes: list[Quote] = field(default_factory=list)
    num_tokens: int = 0
    finished: bool = True
    seconds: float = 0.0
    candidates: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quotes"] = [q.to_dict() for q in self.quotes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Speech:
        d = dict(d)
        d["quotes"] = [Quote(**q) for q in d.get("quotes", [])]
        return cls(**d)


@dataclass
class Transcript:
    question: Question
    format: Format
    speeches: list[Speech] = field(default_factory=list)

    def visible_to(self, side: int) -> list[Speech]:
        return [s for s in self.speeches if self.format.sees(side, s.side)]

    def with_speech(self, speech: Speech) -> Transcript:
        """A copy with one more speech (best-of-N scores candidates on such copies)."""
        return Transcript(self.question, self.format, [*self.speeches, speech])

    def _render_speeches(self, prompts: PromptSet, speeches: list[Speech], swap: bool, for_judge: bool) -> str:
        if not speeches:
            return NO_SPEECHES
        entries = []
        for s in speeches:
            text = mark_quotes(s.text, s.quotes) if for_judge else s.text
            entries.append(prompts.render("transcript_entry", name=role_name(self.format, s.side, swap), speech=text))
        return "\n\n".join(entries)

    def debater_chat(self, side: int, prompts: PromptSet) -> Chat:
        """The chat a debater on ``side`` answers with its next speech.

        With a ``debater_next_turn`` template (the built-in sets have one) the chat is multi-turn:
        the debater's own speeches are its assistant messages, and each user message brings what
        it saw since its last speech. Each turn's chat then extends the previous one, so a backend
        that keeps KV caches (``HFGenerator``) prefills only the new messages. Without it, one
        user message (``debater_turn``) holds the whole transcript.
        """
        q, fmt = self.question, self.format
        visible = self.visible_to(side)
        own = [s for s in visible if s.side == side]
        fields = dict(
            name=role_name(fmt, side),
            opponent=role_name(fmt, 1 - side),
            position=q.positions[side],
            opponent_position=q.positions[1 - side],
            question=q.question,
            story=q.story,
            num_speeches=fmt.num_speeches,
            word_limit=fmt.word_limit,
        )
        chat = [{"role": "system", "content": prompts.render("debater_system", **fields)}]
        if not prompts.has("debater_next_turn"):
            transcript = self._render_speeches(prompts, visible, swap=False, for_judge=False)
            user = prompts.render("debater_turn", **fields, transcript=transcript, speech_number=len(own) + 1)
            return [*chat, {"role": "user", "content": user}]
        shown = 0  # others' speeches are shown in order; one by another side is seen from the next step on
        others = [s for s in visible if s.side != side]
        for number, speech in enumerate([*own, None], start=1):
            seen = len(others) if speech is None else sum(1 for s in others if s.step < speech.step)
            transcript = self._render_speeches(prompts, others[shown:seen], swap=False, for_judge=False)
            shown = seen
            template = "debater_turn" if number == 1 else "debater_next_turn"
            chat.append({"role": "user", "content": prompts.render(template, **fields, transcript=transcript, speech_number=number)})
            if speech is not None:
                chat.append({"role": "assistant", "content": speech.text})
        return chat

    def judge_chat(self, prompts: PromptSet, swap: bool = False) -> Chat:
        """The judge's chat. ``swap`` presents position B as answer A (to cancel position bias)."""
        q = self.question
        a, b = (q.positions[1], q.positions[0]) if swap else q.positions
        fields = dict(
            question=q.question,
            position_a=a,
            position_b=b,
            transcript=self._render_speeches(prompts, self.speeches, swap=swap, for_judge=True),
        )
        user = prompts.render("judge_user", **fields) + "\n\n" + prompts.render("judge_decision", **fields)
        return [
            {"role": "system", "content": prompts.render("judge_system", **fields)},
            {"role": "user", "content": user},
        ]
