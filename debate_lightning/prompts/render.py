"""Load a prompt set (YAML) and render its templates into chat messages.

A prompt set is a YAML mapping of named templates. Templates use ``{placeholder}`` fields:
``name``, ``opponent``, ``position``, ``opponent_position``, ``question``, ``story``,
``transcript``, ``position_a``, ``position_b``, ``num_speeches``, ``speech_number``, ``word_limit``.
A template that names an unknown field fails at load time, naming the file and the template.
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
    for key, template in data.items():
        if not isinstance(template, str):
            raise ValueError(f"prompt set {path}, template {key!r}: expected a string, got {type(template).__name__}")
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in FIELDS:
                raise ValueError(
                    f"prompt set {path}, template {key!r}: unknown placeholder {{{field_name}}}; "
                    f"known: {', '.join(sorted(FIELDS))}"
                )
    return PromptSet(name=path.stem, templates=data, source=str(path))
