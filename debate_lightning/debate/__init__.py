"""The game: formats, transcripts, agents, the batched engine, and quote checking."""

from debate_lightning.debate.agents import BestOfNDebater, Debater, Judge
from debate_lightning.debate.engine import RoundResult, RoundSpec, judge_transcripts, play_speeches, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Speech, Transcript

__all__ = [
    "BestOfNDebater",
    "Debater",
    "Format",
    "Judge",
    "RoundResult",
    "RoundSpec",
    "Speech",
    "Transcript",
    "judge_transcripts",
    "play_speeches",
    "run_rounds",
]
