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
    scratchpad: str | None = None  # the speaker's private notes; no one else's chat ever shows them

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

    def debater_chat(self, side: int, prompts: PromptSet, scratchpad: str | None = None) -> Chat:
        """The chat a debater on ``side`` answers with its next speech.

        With ``scratchpad`` (the debater's private notes for this speech) the chat is the
        ``debater_scratchpad_chat`` followed by the notes as its answer and a
        ``debater_scratchpad_speech`` message. Notes of earlier speeches are not shown again.

        With a ``debater_next_turn`` template (the built-in sets have one) the chat is multi-turn:
        the debater's own speeches are its assistant messages, and each user message brings what
        it saw since its last speech. Each turn's chat then extends the previous one, so a backend
        that keeps KV caches (``HFGenerator``) prefills only the new messages. Without it, one
        user message (``debater_turn``) holds the whole transcript.
        """
        if scratchpad is not None:
            speech_number = sum(1 for s in self.speeches if s.side == side) + 1
            ask = prompts.render("debater_scratchpad_speech", **self._debater_fields(side), speech_number=speech_number)
            return [*self.debater_scratchpad_chat(side, prompts),
                    {"role": "assistant", "content": scratchpad}, {"role": "user", "content": ask}]
        return self._debater_turn_chat(side, prompts)

    def debater_scratchpad_chat(self, side: int, prompts: PromptSet) -> Chat:
        """The chat a debater answers with its private notes: its speech chat, with the
        ``debater_scratchpad`` request appended to the last user message."""
        chat = self._debater_turn_chat(side, prompts)
        speech_number = sum(1 for s in self.speeches if s.side == side) + 1
        ask = prompts.render("debater_scratchpad", **self._debater_fields(side), speech_number=speech_number)
        return [*chat[:-1], {"role": "user", "content": chat[-1]["content"] + "\n\n" + ask}]

    def _debater_fields(self, side: int) -> dict[str, Any]:
        q, fmt = self.question, self.format
        return dict(
            name=role_name(fmt, side),
            opponent=role_name(fmt, 1 - side),
            position=q.positions[side],
            opponent_position=q.positions[1 - side],
            position_a=q.positions[0],  # answers by letter, whatever the side (open debate's choice)
            position_b=q.positions[1],
            question=q.question,
            story=q.story,
            num_speeches=fmt.num_speeches,
            word_limit=fmt.word_limit,
        )

    def _debater_turn_chat(self, side: int, prompts: PromptSet) -> Chat:
        visible = self.visible_to(side)
        own = [s for s in visible if s.side == side]
        fields = self._debater_fields(side)
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

    def judge_chat(self, prompts: PromptSet, swap: bool = False, reasoning: str | None = None) -> Chat:
        """The judge's chat. ``swap`` presents position B as answer A (to cancel position bias).

        With ``reasoning`` (the judge's own text for this order) the chat is the
        ``judge_reasoning_chat``, the reasoning as its answer, then ``judge_decision``: the A/B
        answer is scored after the reasoning.
        """
        if reasoning is not None:
            decision = prompts.render("judge_decision", **self._judge_fields(prompts, swap))
            return [*self.judge_reasoning_chat(prompts, swap),
                    {"role": "assistant", "content": reasoning}, {"role": "user", "content": decision}]
        fields = self._judge_fields(prompts, swap)
        user = prompts.render("judge_user", **fields) + "\n\n" + prompts.render("judge_decision", **fields)
        return [
            {"role": "system", "content": prompts.render("judge_system", **fields)},
            {"role": "user", "content": user},
        ]

    def judge_reasoning_chat(self, prompts: PromptSet, swap: bool = False) -> Chat:
        """The chat the judge answers with its reasoning (``judge_user`` + ``judge_reasoning``)."""
        fields = self._judge_fields(prompts, swap)
        user = prompts.render("judge_user", **fields) + "\n\n" + prompts.render("judge_reasoning", **fields)
        return [
            {"role": "system", "content": prompts.render("judge_system", **fields)},
            {"role": "user", "content": user},
        ]

    def _judge_fields(self, prompts: PromptSet, swap: bool) -> dict[str, Any]:
        q = self.question
        a, b = (q.positions[1], q.positions[0]) if swap else q.positions
        return dict(
            question=q.question,
            position_a=a,
            position_b=b,
            transcript=self._render_speeches(prompts, self.speeches, swap=swap, for_judge=True),
        )
