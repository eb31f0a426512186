"""Open debate: blind choice statements first, then each debater argues for its own choice."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from debate_lightning.debate.agents import Debater, Judge
from debate_lightning.debate.engine import RoundSpec, run_rounds
from debate_lightning.debate.formats import Format
from debate_lightning.debate.open_debate import choice_stats, chosen_sides, parse_choice
from debate_lightning.models.base import Generator
from debate_lightning.models.registry import ModelSpec
from debate_lightning.models.scripted import RepetitiveGenerator
from debate_lightning.tournament.cli import parse_tournament_args
from debate_lightning.tournament.report import write_report
from debate_lightning.tournament.runner import run_tournament

SHIPPED = Path(__file__).parents[2] / "debate_lightning" / "configs" / "tournament_open_debate.yaml"


class Recording(Generator):
    """Passes calls to ``inner`` and keeps every chat it was asked to answer."""

    def __init__(self, inner: Generator):
        self.inner, self.name, self.chats = inner, inner.name, []

    def generate(self, chats, params):
        self.chats.extend(chats)
        return self.inner.generate(chats, params)


def test_the_format_plays_blind_choices_then_a_debate():
    f = Format(kind="open_debate", num_speeches=2)
    assert f.steps() == [(0, 1), (0,), (1,), (0,), (1,)]
    assert Format(kind="open_debate", num_speeches=1, simultaneous=True).steps() == [(0, 1), (0, 1)]
    assert f.sides == (0, 1) and f.sees(0, 1) and f.sees(1, 0) and f.prompts == "open_debate"
    assert f.name == "open_debate" and Format(kind="open_debate", simultaneous=True).name == "open_debate_simultaneous"
    with pytest.raises(ValueError, match="num_speeches"):
        Format(kind="open_debate", num_speeches=0)


@pytest.mark.parametrize(
    "text, expected",
    [("I defend answer A", 0), ("I defend Answer (B).", 1), ("B.", 1), ("(A) because", 0), ("A", 0),
     ("A man found it. I defend answer B", 1), ("A man found it.", None), ("the answer a", None), ("", None)],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def play(questions, letters, fmt=Format(kind="open_debate", num_speeches=2)):
    gens = {n: Recording(RepetitiveGenerator(answer=letter, repeats=2, name=n)) for n, letter in zip("xy", letters)}
    debaters = {n: Debater(n, g) for n, g in gens.items()}
    judge = Judge(RepetitiveGenerator(name="r"), both_orders=False)
    return run_rounds([RoundSpec(q, fmt, ("x", "y")) for q in questions], debaters, judge), gens


def test_a_round_records_each_choice_and_the_speeches_argue_for_it(questions):
    [r], gens = play(questions[:1], "AB")
    assert r.ok and chosen_sides(r.speeches) == [0, 1]
    steps = [(s["side"], s["step"]) for s in r.speeches]
    assert steps == [(0, 0), (1, 0), (0, 1), (1, 2), (0, 3), (1, 4)]
    for s in r.speeches[2:]:
        assert s["text"] == " ".join([f"Answer {'AB'[s['side']]} is correct."] * 2)
    # The last speech (side 1's) names B twice and A never: P(A) = (0 + 1) / (2 + 2).
    assert r.p_a == pytest.approx(1 / 4) and r.winner == 1
    # The choices were blind: side 1's choice chat holds no statement of side 0's.
    first_y = gens["y"].chats[0]
    assert "I defend answer A." not in json.dumps(first_y) and "<speech" not in json.dumps(first_y)
    # Both seats saw the answers labelled in the same A/B order.
    q = questions[0]
    for g in gens.values():
        assert f"A: {q.positions[0]}\nB: {q.positions[1]}" in g.chats[0][-1]["content"]
    # From its second turn on, a debater's own choice is its first assistant message.
    later = gens["y"].chats[1]
    assert [m["content"] for m in later if m["role"] == "assistant"][0] == "I defend answer B."
    assert "I defend answer A." in later[-1]["content"]  # and it saw the opponent's choice since


def test_both_may_choose_the_same_answer_and_both_then_argue_for_it(questions):
    results, _ = play(questions, "BB")
    for r in results:
        assert chosen_sides(r.speeches) == [1, 1]
        assert all("Answer B is correct." in s["text"] for s in r.speeches[2:])
        assert r.p_a == pytest.approx(1 / 4)
    stats = choice_stats(results)
    wrong = sum(r.correct_index != 1 for r in results)
    assert stats["both_same"] == len(results) and stats["both_same_correct"] == len(results) - wrong


def test_stats_equal_a_hand_count(questions):
    results, _ = play(questions, "AB", Format(kind="open_debate", num_speeches=1))
    first = results[0]
    silent = [dict(first.speeches[0], text="no idea"), *first.speeches[1:]]
    results += [dataclasses.replace(first, speeches=silent, round_id="nochoice")]
    stats = choice_stats(results)
    # Hand count: x always says A (index 0), y always B (index 1); the extra round's x named nothing.
    x_correct = sum(r.correct_index == 0 for r in results[:-1])
    y_correct = sum(r.correct_index == 1 for r in results)
    n = len(results)
    assert stats["statements"] == 2 * n and stats["no_choice"] == 1
    assert stats["correct"] == x_correct + y_correct
    assert stats["share"] == pytest.approx((x_correct + y_correct) / (2 * n))
    assert stats["share_of_choices"] == pytest.approx((x_correct + y_correct) / (2 * n - 1))
    assert stats["by_debater"]["x"]["correct"] == x_correct and stats["by_debater"]["y"]["statements"] == n
    assert choice_stats([dataclasses.replace(r, format=dict(r.format, kind="debate")) for r in results]) is None


def write_config(tmp_path, **changes) -> Path:
    cfg = yaml.safe_load(SHIPPED.read_text())
    cfg.update(changes)
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_tournament_reports_the_correct_side_share_of_a_hand_count(tmp_path):
    path = write_config(
        tmp_path,
        models={"a": {"backend": "repetitive", "options": {"answer": "A"}}, "r": {"backend": "repetitive"},
                "b": {"backend": "repetitive", "options": {"answer": "B"}}},
        debaters=[{"name": "x", "model": "a"}, {"name": "y", "model": "b"}],
        judge={"model": "r", "both_orders": False},
        schedule={"kind": "round_robin"},
        output=str(tmp_path / "out"),
    )
    cfg, _ = parse_tournament_args(["--config", str(path)])
    results = run_tournament(cfg, progress=False)
    assert len(results) == 3 * 2 * 2  # questions x side orders x ordered pairs
    lines = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    letter = {"x": 0, "y": 1}
    hand = sum(letter[name] == line["correct_index"] for line in lines for name in line["debaters"])
    m = write_report(tmp_path / "out", n_boot=50, plots=False)
    assert m["open_debate"]["correct"] == hand and m["open_debate"]["share"] == pytest.approx(hand / 24)
    assert m["open_debate"]["both_same"] == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Open debate: chosen sides" in report and f"| **all** | 24 | {hand} | 0 |" in report
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["open_debate"]["correct"] == hand


def test_the_shipped_config_runs_on_the_tiny_model(tmp_path, tiny_model_dir):
    cfg, _ = parse_tournament_args(["--config", str(SHIPPED)])
    assert cfg.formats[0].kind == "open_debate" and cfg.judge.both_orders is False
    tiny = ModelSpec(backend="hf", path=str(tiny_model_dir), dtype="float32", device="cpu")
    cfg = dataclasses.replace(cfg, models={**cfg.models, "embedded": tiny}, output=str(tmp_path / "out"))
    cfg = dataclasses.replace(cfg, debaters=[dataclasses.replace(d, max_new_tokens=8) for d in cfg.debaters])
    results = run_tournament(cfg, progress=False)
    assert len(results) == 6 and all(r.ok for r in results)
    for r in results:
        assert [(s["side"], s["step"]) for s in r.speeches] == [(0, 0), (1, 0), (0, 1), (1, 2)]
        assert 0 < r.p_a < 1
    m = write_report(tmp_path / "out", n_boot=50, plots=False)
    assert m["open_debate"]["rounds"] == 6 and m["open_debate"]["statements"] == 12
