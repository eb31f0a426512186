"""Question records and their loaders. Knows nothing of debates, tournaments or training."""

from typing import Any

from debate_lightning.data.config import DataConfig
from debate_lightning.data.preferences import PreferencePair, read_preferences, write_preferences
from debate_lightning.data.question import DataError, Question

__all__ = [
    "DataConfig",
    "DataError",
    "PreferencePair",
    "Question",
    "data_main",
    "load_questions",
    "read_preferences",
    "write_preferences",
]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m debate_lightning.data.loading` does not find its own module
    # already imported by the package (runpy warns about that).
    if name in ("load_questions", "data_main"):
        from debate_lightning.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
