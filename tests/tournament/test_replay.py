"""Replay debaters (debate/replay.py): human debates judged by a model, and one side of an earlier run
replayed against a new opponent. Scripted judges; the debates files are small records in the NYU
``debates-readable.jsonl`` format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from tournament_helpers import REPO

from debate_lightning.data.config import DataConfig
from debate_lightning.data.human_debates import SPLIT_WEIGHTS
from debate_lightning.data.question import hash_split
from debate_lightning.debate.formats import Format
from debate_lightning.debate.replay import REFUSED, OfflineReplayMismatch
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.cli import parse_tournament_args
from debate_lightning.tournament.config import DebaterConfig, JudgeConfig, ScheduleConfig, TournamentConfig
from debate_lightning.tournament.report import write_report
from debate_lightning.tournament.runner import run_tournament

STORY = "Ann found the key under the mat. Bob was at the station. The train was late."
# Bytes a careless replay would change: quote markup, non-ASCII, trailing and inner whitespace, CRLF.
SPEECHES = {
    "q1": [(0, "Ann did it: <quote>Ann found the key</quote>.  "), (1, "Bob — clearly.\r\nSee the station."),
           (0, "  Still Ann; café\u00a0noir.\n"), (1, "Bob, \"again\".")],
    # Side 1 (answer "Bob") has one speech only: its second speech cannot be filled.
    "q2": [(0, "It was late."), (1, "It was early."), (0, "Late, I say.")],
}


def _test_story_ids(n: int) -> list[str]:
    """Story ids the human_debates loader puts in the test split (the shipped config's split)."""
    ids, i = [], 0
    while len(ids) < n:
        if hash_split(f"story{i}", SPLIT_WEIGHTS) == "test":
            ids.append(f"story{i}")
        i += 1
    return ids


def write_human_debates(path: Path) -> Path:
    s1, s2 = _test_story_ids(2)
    records = []
    for story_id, (qid, question, answers) in zip((s1, s2), (("q1", "Who found the key?", ["Ann", "Bob"]),
                                                            ("q2", "Was the train late?", ["Late", "Early"]))):
        turns = [{"role": "Debater", "index": i, "text": t} for i, t in SPEECHES[qid]]
        # Two sessions of the same debate: the live judge (right) and an offline judge (wrong).
        for judge, final, correct in (("live", [0.8, 0.2], True), ("offline", [0.4, 0.6], False)):
            records.append({"storyId": story_id, "storyTitle": f"Title {qid}", "story": STORY, "question": question,
                            "answers": answers, "debateId": f"d-{qid}", "judge": judge,
                            "turns": [*turns, {"role": "Judge", "index": None, "text": "ok", "probabilities": final}],
                            "isJudgeCorrect": correct, "correctAnswer": answers[0]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def shipped_human_config(data: Path, out: Path) -> TournamentConfig:
    """configs/human_debates_judged.yaml pointed at ``data``, with a random judge for speed."""
    cfg, _ = parse_tournament_args(["--config", str(REPO / "configs" / "human_debates_judged.yaml")])
    models = dict(cfg.models)
    models["human"] = dataclasses.replace(models["human"], path=str(data))
    models["embedded"] = ModelSpec(backend="random")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)), models=models, output=str(out))


def test_human_replay_speaks_the_recorded_speeches_byte_for_byte_and_refuses_what_is_missing(tmp_path):
    data = write_human_debates(tmp_path / "debates-readable.jsonl")
    results = run_tournament(shipped_human_config(data, tmp_path / "out"), progress=False)
    assert len(results) == 4  # 2 questions x 2 side orders
    ok = [r for r in results if r.ok]
    assert [r.question["question"] for r in ok] == ["Who found the key?"] * 2 and all(r.p_a is not None for r in ok)
    for r in ok:
        positions = r.question["positions"]
        for side in (0, 1):
            recorded = [t for i, t in SPEECHES["q1"] if ["Ann", "Bob"][i] == positions[side]]
            spoken = [s["text"] for s in r.speeches if s["side"] == side]
            assert [t.encode() for t in spoken] == [t.encode() for t in recorded]
        assert [s["side"] for s in r.speeches] == [0, 1, 0, 1]
    # rounds.jsonl holds the exact bytes too (not only the in-memory results)
    saved = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {s["text"] for r in saved if r["status"] == "ok" for s in r["speeches"]} == {t for _, t in SPEECHES["q1"]}

    refused = [r for r in results if not r.ok]
    assert len(refused) == 2 and all(r.p_a is None for r in refused)
    for r in refused:
        early_side = "AB"[r.question["positions"].index("Early")]
        assert REFUSED in r.error and r.question["uid"] in r.error
        assert f"side {early_side}" in r.error and "asks for speech 2" in r.error and "has 1 speech(es)" in r.error
        # nothing was made up: the side's missing speech is empty and no speech came after it
        assert [s["text"] for s in r.speeches if s["error"]] == [""] and r.speeches[-1]["error"]

    m = write_report(tmp_path / "out", n_boot=50, plots=False)
    h = m["human_judges"]
    assert h["refused"] == 2 and {x["round_id"] for x in h["refused_rounds"]} == {r.round_id for r in refused}
    # the human judges of q1's debate: live right (P(correct) .8), offline wrong (P(correct) .4)
    assert h["humans"] == {"questions": 1, "sessions": 2, "binary": 0.5, "prob": pytest.approx(0.6), "prob_sessions": 2}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Model judge vs human judges" in md and "human judges (recorded)" in md and "**2**" in md


def test_a_replay_backend_is_only_a_debater(tmp_path):
    data = write_human_debates(tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match="only a tournament debater"):
        build_generator(ModelSpec(backend="human_replay", path=str(data)), "h")
    cfg = shipped_human_config(data, tmp_path / "out")
    with pytest.raises(ValueError, match="model 'human'.*only a tournament debater"):
        run_tournament(dataclasses.replace(cfg, judge=JudgeConfig(model="human")), progress=False)
    missing = dataclasses.replace(cfg, models={**cfg.models, "human": ModelSpec(backend="human_replay", path="nope.jsonl")},
                                  output=str(tmp_path / "out2"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_tournament(missing, progress=False)


# --------------------------------------------------------------------------- offline replay


def offline_config(out: Path, models: dict, opponent: str, formats=None, limit: int = 2) -> TournamentConfig:
    return TournamentConfig(
        data=DataConfig(source="synthetic", limit=limit, both_orders=True),
        models=models,
        debaters=[DebaterConfig(name="alice", model="a"), DebaterConfig(name=opponent, model="o")],
        judge=JudgeConfig(model="j"),
        formats=formats or [Format(kind="debate", num_speeches=2)],
        schedule=ScheduleConfig(kind="custom", matchups=[["alice", opponent], [opponent, "alice"]]),
        output=str(out), rounds_in_flight=3,
    )


def _alice(results) -> dict:
    return {(r.question["uid"], side, Format(**r.format).name): [s["text"] for s in r.speeches if s["side"] == side]
            for r in results for side in (0, 1) if r.debaters[side] == "alice"}


@pytest.fixture
def first_run(tmp_path):
    models = {"a": ModelSpec(backend="random", options={"seed": 3}), "o": ModelSpec(backend="deterministic",
              options={"template": "bob says no"}), "j": ModelSpec(backend="random")}
    results = run_tournament(offline_config(tmp_path / "run1", models, "bob"), progress=False)
    assert all(r.ok for r in results) and len(results) == 8
    return tmp_path / "run1", results


def test_offline_replay_speaks_one_debaters_earlier_speeches_against_a_new_opponent(tmp_path, first_run):
    run1, before = first_run
    models = {"a": ModelSpec(backend="offline", path=str(run1), debater="alice"),  # as a config says it
              "o": ModelSpec(backend="deterministic", options={"template": "carol disagrees"}),
              "j": ModelSpec(backend="random", options={"seed": 9})}
    after = run_tournament(offline_config(tmp_path / "run2", models, "carol"), progress=False)
    assert all(r.ok for r in after) and len(after) == 8
    assert _alice(after) == _alice(before) and len(_alice(after)) == 8
    assert all(len(texts) == 2 and texts[0] != texts[1] for texts in _alice(after).values())  # random words, replayed
    # the opponent is new: every non-alice speech is carol's
    assert {s["text"] for r in after for s in r.speeches if r.debaters[s["side"]] == "carol"} == {"carol disagrees"}


@pytest.mark.parametrize("change, named", [
    ({"formats": [Format(kind="consultancy", num_speeches=1)]}, "format consultancy0"),
    ({"limit": 3}, "the earlier run has no round for question"),
    ({"formats": [Format(kind="debate", num_speeches=3)]}, "this round asks for speech 3"),
])
def test_offline_replay_refuses_a_round_the_earlier_run_did_not_play_naming_it(tmp_path, first_run, change, named):
    run1, before = first_run
    models = {"a": ModelSpec(backend="offline", path=str(run1), options={"debater": "alice"}),
              "o": ModelSpec(backend="deterministic"), "j": ModelSpec(backend="random")}
    cfg = offline_config(tmp_path / "run2", models, "carol", formats=change.get("formats"), limit=change.get("limit", 2))
    known = {r.question["uid"] for r in before}
    with pytest.raises(OfflineReplayMismatch, match=named) as e:
        run_tournament(cfg, progress=False)
    message = str(e.value)
    assert "'alice'" in message and str(run1) in message and ", side " in message and "format " in message
    uid = message.split("question ")[1].split(" ")[0]
    assert (uid in known) == ("limit" not in change)  # the unplayed question is the new one


def test_offline_replay_names_the_debater_it_cannot_find(tmp_path, first_run):
    run1, _ = first_run
    models = {"a": ModelSpec(backend="offline", path=str(run1), options={"debater": "zed"}),
              "o": ModelSpec(backend="deterministic"), "j": ModelSpec(backend="random")}
    with pytest.raises(ValueError, match=r"debater 'zed' does not speak in .*; it has \['alice', 'bob'\]"):
        run_tournament(offline_config(tmp_path / "run2", models, "carol"), progress=False)
    models["a"] = ModelSpec(backend="offline", path=str(run1))
    with pytest.raises(ValueError, match=r"say which debater to replay with debater: NAME"):
        run_tournament(offline_config(tmp_path / "run3", models, "carol"), progress=False)


@pytest.mark.slow
def test_the_shipped_config_runs_on_the_embedded_judge_and_reports_both_judges(tmp_path):
    from debate_lightning.tournament.cli import tournament_main

    data = write_human_debates(tmp_path / "debates-readable.jsonl")
    text = (REPO / "configs" / "human_debates_judged.yaml").read_text()
    assert text.count("path: debates-readable.jsonl") == 2  # the data source and the replay read one file
    config = tmp_path / "human.yaml"
    config.write_text(text.replace("path: debates-readable.jsonl", f"path: {data}"))
    out = tmp_path / "out"
    assert tournament_main(["--config", str(config), "--output", str(out), "--progress", "false"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["judges"] == ["embedded"] and m["rounds"]["judged"] == 2 and m["human_judges"]["refused"] == 2
    assert m["human_judges"]["humans"]["sessions"] == 2
    assert "## Model judge vs human judges" in (out / "report.md").read_text()


def test_the_shipped_offline_config_replays_the_default_run(tiny_model_dir, tmp_path):
    """configs/tournament_offline.yaml after configs/tournament.yaml (as `make run` writes it), on
    the tiny model: the replayed side says exactly what smollm2 said on that question and side."""
    from debate_lightning.tournament.cli import tournament_main
    from debate_lightning.tournament.results import read_results

    quiet = ["--progress", "false", "--report", "false", "--models.embedded.path", str(tiny_model_dir),
             "--models.embedded.dtype", "float32"]
    first, second = tmp_path / "tournament", tmp_path / "offline"
    assert tournament_main(["--config", "tournament.yaml", "--output", str(first), *quiet]) == 0
    assert tournament_main(["--config", "tournament_offline.yaml", "--output", str(second),
                            "--models.earlier.path", str(first), *quiet]) == 0
    said = {(r.question["uid"], s["side"]): s["text"] for r in read_results(first) for s in r.speeches}
    replayed = [(r.question["uid"], s["side"], s["text"]) for r in read_results(second) for s in r.speeches
                if r.debaters[s["side"]] == "smollm2_replayed"]
    assert len(replayed) == 16  # 8 rounds x 2 side assignments, one speech each
    assert all(text == said[(uid, side)] for uid, side, text in replayed)
