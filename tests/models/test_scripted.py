import pytest

from debate_lightning.data.question import DataError
from debate_lightning.models.base import SamplingParams
from debate_lightning.models.registry import ModelSpec, backends, build_generator
from debate_lightning.models.scripted import DeterministicGenerator, RecordingGenerator, ReplayGenerator

CHATS = [[{"role": "user", "content": f"speech {i}"}] for i in range(3)]


def test_record_then_replay_roundtrip(tmp_path):
    path = tmp_path / "rec.jsonl"
    rec = RecordingGenerator(DeterministicGenerator(template="speech number {i}"), path)
    original = rec.generate(CHATS, SamplingParams())
    replay = ReplayGenerator(path)
    again = replay.generate(list(reversed(CHATS)), SamplingParams())
    assert [g.text for g in again] == [g.text for g in reversed(original)]
    unknown = replay.generate([[{"role": "user", "content": "never seen"}]], SamplingParams())[0]
    assert unknown.error and "no recorded speech" in unknown.error


def test_replay_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text('{"chat": [], "text": "ok"}\n{"chat": []\n')
    with pytest.raises(DataError) as e:
        ReplayGenerator(path)
    assert str(path) in str(e.value) and "line 2" in str(e.value)


def test_registry_builds_scripted_and_rejects_unknown():
    assert {"hf", "random", "deterministic", "replay"} <= set(backends())
    g = build_generator(ModelSpec(backend="deterministic", options={"template": "x"}), "d")
    assert g.generate(CHATS[:1], SamplingParams())[0].text == "x"
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        build_generator(ModelSpec(backend="nope"), "m")
