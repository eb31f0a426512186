"""Load a prompt set (YAML) and render its templates into chat messages.

A prompt set is a YAML mapping of named templates. Templates use ``{placeholder}`` fields:
``name``, ``opponent``, ``position``, ``opponent_position``, ``question``, ``story``,
``transcript``, ``position_a``, ``position_b``, ``num_speeches``, ``speech_number``, ``word_limit``.
A template that names an unknown field fails at load time, naming the file and the template; so
does a template name the package does not know (a typo would otherwise silently fall back to a
default) and a missing required one. The scratchpad templates are optional: a set without them
gets the defaults below, so every older set works with ``formats[].scratchpad`` unchanged.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROMPT_DIR = Path(__file__).parent
FIELDS = frozenset(
    {
        "name",
        "opponent",
        "position",
        "opponent_position",
        "question",
        "story",
        "transcript",
        "position_a",
        "position_b",
        "num_speeches",
        "speech_number",
        "word_limit",
        "speech",
    }
)
# Every set must define these; roles a format does not use may be empty strings.
REQUIRED = ("debater_system", "debater_turn", "judge_system", "judge_user", "judge_decision", "transcript_entry")
# Optional templates and the text a set without them gets ("" = the feature is off for that set).
#   debater_next_turn: later turns of a multi-turn debater chat (see Transcript.debater_chat).
#   debater_scratchpad: appended to the debater's turn message to ask for private notes.
#   debater_scratchpad_speech: the next user message, after the notes, asking for the speech.
#   judge_reasoning: appended to the judge's user message to ask for reasoning before a verdict;
#   judge_decision then follows the reasoning as the next user message.
OPTIONAL: dict[str, str] = {
    "debater_next_turn": "",
    "debater_scratchpad": (
        "Before you speak, write private notes: the strongest quotes for your answer and how to answer "
        "{opponent}. Nobody else will see these notes. Write only the notes, not the speech."
    ),
    "debater_scratchpad_speech": "Now give speech {speech_number} of {num_speeches}, using your notes.",
    "judge_reasoning": (
        "Before deciding, reason step by step about the arguments and which quotes are valid. "
        "Do not state your final answer yet."
    ),
}
TEMPLATES = (*REQUIRED, *OPTIONAL)


@dataclass(frozen=True)
class PromptSet:
    name: str
    templates: dict[str, str]
    source: str

    def render(self, key: str, **fields: Any) -> str:
        try:
            template = self.templates[key]
        except KeyError:
            raise KeyError(f"prompt set {self.name!r} ({self.source}) has no template {key!r}") from None
        return template.format_map(fields).strip()

    def has(self, key: str) -> bool:
        return bool(self.templates.get(key))


def available() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A built-in set by name (``debate``, ``consultancy``, ``empty``) or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPT_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"prompt set {name_or_path!r} not found (built-in sets: {', '.join(available())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"prompt set {path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"prompt set {path}: expected a mapping of template names to strings")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"prompt set {path}: missing templates {missing}")
    unknown = [k for k in data if k not in TEMPLATES]
    if unknown:
        raise ValueError(f"prompt set {path}: unknown templates {unknown}; known: {', '.join(TEMPLATES)}")
    for key, template in data.items():
        if not isinstance(template, str):
            raise ValueError(f"prompt set {path}, template {key!r}: expected a string, got {type(template).__name__}")
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in FIELDS:
                raise ValueError(
                    f"prompt set {path}, template {key!r}: unknown placeholder {{{field_name}}}; "
                    f"known: {', '.join(sorted(FIELDS))}"
                )
    return PromptSet(name=path.stem, templates={**OPTIONAL, **data}, source=str(path))
