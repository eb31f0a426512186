"""Preference-pair JSONL: round trips, appends, and errors that name file, line and field."""

from __future__ import annotations

import json

import pytest

from debate_lightning.data import DataError, PreferencePair, read_preferences, write_preferences

PROMPT = [{"role": "system", "content": "You are Debater A."}, {"role": "user", "content": "Argue: «Ann»."}]


def pair(**overrides: object) -> PreferencePair:
    fields = dict(prompt=PROMPT, chosen="Ann, because “quote”.", rejected="Bob.", chosen_p=0.8, rejected_p=0.35,
                  preference=0.73, meta={"round": "r1", "turn": 2})
    fields.update(overrides)
    return PreferencePair(**fields)


def test_round_trip_and_append(tmp_path):
    path = tmp_path / "sub" / "prefs.jsonl"
    pairs = [pair(), pair(chosen_p=None, rejected_p=None, preference=1.0, meta={})]
    assert write_preferences(path, pairs) == 2
    back = read_preferences(path)
    assert back == pairs and back[0].meta == {"round": "r1", "turn": 2}
    assert json.loads(path.read_text().splitlines()[0])["chosen"] == "Ann, because “quote”."  # readable UTF-8
    write_preferences(path, [pair(preference=0.0)], append=True)
    assert [p.preference for p in read_preferences(path)] == [0.73, 1.0, 0.0]
    write_preferences(path, [pair()])
    assert len(read_preferences(path)) == 1  # without append the file is replaced


def test_defaults_and_constructor_checks():
    p = PreferencePair(prompt=PROMPT, chosen="a", rejected="b")
    assert (p.chosen_p, p.rejected_p, p.preference, p.meta) == (None, None, 1.0, {})
    with pytest.raises(ValueError, match="'preference'"):
        pair(preference=1.5)
    with pytest.raises(ValueError, match=r"'prompt\[1\].content'"):
        pair(prompt=[PROMPT[0], {"role": "user"}])


@pytest.mark.parametrize(
    "line, field, message",
    [
        ("{not json", None, "invalid JSON"),
        ('"a string"', None, "expected a JSON object"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": "b"}, "preference", "missing"),
        ({"prompt": [], "chosen": "a", "rejected": "b", "preference": 1}, "prompt", "non-empty list"),
        ({"prompt": ["hi"], "chosen": "a", "rejected": "b", "preference": 1}, "prompt[0]", "role, content"),
        ({"prompt": [{"content": "x"}], "chosen": "a", "rejected": "b", "preference": 1}, "prompt[0].role", "missing"),
        ({"prompt": PROMPT, "rejected": "b", "preference": 1}, "chosen", "missing"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": 3, "preference": 1}, "rejected", "not a string"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": "b", "preference": 1, "chosen_p": "high"},
         "chosen_p", "probability"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": "b", "preference": -0.1}, "preference", "probability"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": "b", "preference": True}, "preference", "probability"),
        ({"prompt": PROMPT, "chosen": "a", "rejected": "b", "preference": 1, "meta": []}, "meta", "object"),
    ],
)
def test_malformed_line_names_file_line_field(tmp_path, line, field, message):
    path = tmp_path / "prefs.jsonl"
    write_preferences(path, [pair()])
    with path.open("a") as f:
        f.write("\n")  # a blank line is skipped but counted
        f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_preferences(path)
    assert (err.value.path, err.value.line, err.value.field) == (path, 3, field)
    assert f"{path} line 3" in str(err.value)
