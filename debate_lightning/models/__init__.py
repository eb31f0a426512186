"""Everything that produces text or scores, behind one protocol (see base.py)."""

from debate_lightning.models.base import Chat, Generation, Generator, SamplingParams, ScoringUnsupported

__all__ = ["Chat", "Generation", "Generator", "SamplingParams", "ScoringUnsupported"]
