"""QuALITY v1.0.1 loader, on the real sample record and on small hand-made files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from debate_lightning.data.question import DataError
from debate_lightning.data.quality import (
    article_text,
    best_distractor,
    file_split_of,
    normalise_title,
    read_quality,
    strip_html,
    unwrap_lines,
)

SAMPLE = Path(__file__).parent / "fixtures" / "quality_v1.0.1_sample.jsonl"

# Worked out by hand from the sample's untimed validation votes (see quality.py for the rule):
# q1 gold 2; validators all right, named distractors 3, 3, 1 -> 3 (2 votes)
# q2 gold 3; named 1, 2, 1 -> 1;  q3 gold 4; named 3, 1, 1 -> 1;  q4 gold 1; named 2, 4, 4 -> 4
# q5 (not hard) gold 4; named 1, 2, 2 -> 2
EXPECTED = {  # question id: (gold label, distractor label, gold text, distractor text)
    "52845_YLZPNNYD_q1": (
        2, 3,
        "Because Deirdre has fallen in love with Blake, despite his age, and wants him to take her to the prom.",
        "Because Blake is acting like he's her father, which is a sensitive topic for Deirdre because she lost "
        "her real parents.",
    ),
    "52845_YLZPNNYD_q2": (
        3, 1,
        "He feels guilty about sleeping with Eldoria when there's a child in the hut, Deirdre, who knows exactly "
        "what's going on.",
        "He is embarrassed at the thought that Deirdre might enter the room while he is sleeping with Eldoria.",
    ),
    "52845_YLZPNNYD_q3": (
        4, 1,
        "He feels guilty about hurting Deirdre's feelings after her graduation when he ignored their romantic "
        "connection, and instead, played the part of a parent.",
        "He feels guilty about having slept with Eldoria which perpetuated the demand for female prostitution.",
    ),
    "52845_YLZPNNYD_q4": (1, 4, "a criminal that Blake is hunting", "Eldoria's alter ego"),
}


def test_sample_hard_questions_with_best_distractors():
    qs = read_quality(SAMPLE)
    assert [q.question_id for q in qs] == list(EXPECTED)
    for q in qs:
        gold, distractor, correct_text, wrong_text = EXPECTED[q.question_id]
        assert (q.meta["gold_label"], q.meta["distractor_label"]) == (gold, distractor)
        assert q.correct_position == correct_text
        assert q.positions[1 - q.correct_index] == wrong_text
        assert q.story_title == "The Girl in His Mind" and q.story_id == "52845" and q.source == "quality"
    assert qs[0].meta["distractor_votes"] == {"1": 1, "3": 2}
    assert qs[3].question == "Sabrina York is"


def test_all_difficulties_adds_the_easy_question():
    qs = read_quality(SAMPLE, difficult_only=False)
    assert len(qs) == 5
    q5 = qs[4]
    assert q5.meta["difficult"] is False and (q5.meta["gold_label"], q5.meta["distractor_label"]) == (4, 2)
    assert q5.positions[1 - q5.correct_index] == "He knows she needs the money to move out of her chocoletto hut."


def test_sample_story_is_clean_text():
    story = read_quality(SAMPLE)[0].story
    assert story.startswith("THE GIRL IN HIS MIND\n\nBy ROBERT F. YOUNG\n\n[Transcriber's Note:")
    assert "countless places in which he can hide—even from himself!" in story  # <br/> in running text
    assert "an expurgated version of the kylee sex ritual" in story  # hard wrap across a line end
    assert "<" not in story and "\n\n\n" not in story
    paragraphs = story.split("\n\n")
    assert all("\n" not in p and p == p.strip() for p in paragraphs)
    assert paragraphs[-1].startswith("A man sat on the former")


def test_side_order_depends_on_seed_but_pairs_do_not():
    orders = {seed: [q.correct_index for q in read_quality(SAMPLE, seed=seed)] for seed in range(8)}
    assert len({tuple(o) for o in orders.values()}) > 1
    for seed in range(8):
        assert [q.correct_position for q in read_quality(SAMPLE, seed=seed)] == [e[2] for e in EXPECTED.values()]


def test_both_orders():
    qs = read_quality(SAMPLE, both_orders=True)
    assert len(qs) == 8
    for a, b in zip(qs[::2], qs[1::2]):
        assert a.positions == b.positions[::-1] and a.correct_position == b.correct_position
        assert a.question_id == b.question_id and a.uid != b.uid


def test_splits_dev_file_goes_to_val_or_test_by_article():
    qs = read_quality(SAMPLE)
    (story_split,) = {q.split for q in qs}
    assert story_split in ("val", "test")
    other = "test" if story_split == "val" else "val"
    assert len(read_quality(SAMPLE, split=story_split)) == 4
    assert read_quality(SAMPLE, split=other) == [] and read_quality(SAMPLE, split="train") == []
    assert {q.split for q in read_quality(SAMPLE, file_split="train")} == {"train"}


def test_file_split_from_name():
    assert file_split_of("data/QuALITY.v1.0.1.htmlstripped.train") == "train"
    assert file_split_of("QuALITY.v1.0.1.dev") == "dev"
    assert file_split_of("quality-test.jsonl") == "test"
    assert file_split_of(SAMPLE) == "dev"  # says none: treated as held-out
    assert file_split_of("contest.jsonl") == "dev"  # "test" inside a word does not count


def test_val_test_deduplicated_against_human_debate_titles(tmp_path):
    assert read_quality(SAMPLE, exclude_titles=["  the GIRL in his mind! "]) == []
    assert len(read_quality(SAMPLE, exclude_titles=["Another Story"])) == 4
    assert len(read_quality(SAMPLE, exclude_titles=["The Girl in His Mind"], file_split="train")) == 4
    debates = tmp_path / "debates-readable.jsonl"
    debates.write_text(json.dumps({
        "storyId": "52845", "storyTitle": "The Girl In His Mind", "story": "...", "question": "q?",
        "answers": ["a", "b"], "debateId": "d1", "turns": [], "isJudgeCorrect": True,
    }) + "\n")
    assert read_quality(SAMPLE, exclude_titles=debates) == []
    assert read_quality(SAMPLE, exclude_titles=str(debates)) == []


def test_normalise_title():
    assert normalise_title("  Café  Society: Part II ") == normalise_title("cafe society part ii")


@pytest.mark.parametrize(
    "gold, validation, expected",
    [
        (2, [(2, 3), (2, 3), (2, 1)], (3, {1: 1, 3: 2})),
        (1, [(1, 4), (1, 2)], (2, {2: 1, 4: 1})),  # tie: lowest option number
        (1, [(3, 4), (1, 2), (3, 2)], (3, {2: 1, 3: 2})),  # a wrong validator votes for their answer
        (3, [], (1, {})),  # no votes: lowest wrong option
        (1, [(1, 1)], (2, {})),  # a vote for the gold option is ignored
    ],
)
def test_best_distractor_votes(gold, validation, expected):
    votes = [{"untimed_answer": a, "untimed_eval3_distractor": d} for a, d in validation]
    assert best_distractor(gold, votes) == expected


@pytest.mark.parametrize(
    "markup, text",
    [
        ("<p>one two</p><p>three</p>", "one two\n\nthree"),
        ("<p>hard\nwrapped\n   line</p>", "hard wrapped line"),
        ("<p>running<br/>text</p>", "running text"),
        ("<p>first</p><br/><p>second</p>", "first\n\nsecond"),
        ("para one<br/><br/>para two", "para one\n\npara two"),
        ("<h1>Title</h1><h3>Sub</h3>body", "Title\n\nSub\n\nbody"),
        ("<div>a</div><div>b</div>", "a\n\nb"),
        ("<ul><li>x</li><li>y</li></ul>", "x\n\ny"),
        ("<p>Tom &amp; Jerry&#8212;&quot;hi&quot;&nbsp;there</p>", 'Tom & Jerry—"hi" there'),
        ("<p>an <i>italic</i> word</p>", "an italic word"),
        ("<html><head><title>X</title></head><body><p>body</p></body></html>", "body"),
        ("<!DOCTYPE html><p>a</p>\n \n<hr class='x'/>\n<p>b</p>", "a\n\nb"),
    ],
)
def test_strip_html(markup, text):
    assert strip_html(markup) == text


def test_plain_text_articles_are_unwrapped():
    plain = "Line one\nline two.\n\n  \nNext para &amp; more\n"
    assert unwrap_lines(plain) == "Line one line two.\n\nNext para &amp; more"
    assert article_text(plain) == "Line one line two.\n\nNext para & more"


# ---- malformed input -------------------------------------------------------------------------

def _record() -> dict:
    return json.loads(SAMPLE.read_text().splitlines()[0])


def _write(tmp_path: Path, *records: object, name: str = "bad.dev.jsonl") -> Path:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _mutated(fn) -> dict:
    record = copy.deepcopy(_record())
    fn(record)
    return record


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda r: r.pop("article"), "article", "missing"),
        (lambda r: r.pop("title"), "title", "missing"),
        (lambda r: r.update(questions="none"), "questions", "expected list"),
        (lambda r: r["questions"][2]["options"].pop(), "questions[2].options", "has 3 options, expected 4"),
        (lambda r: r["questions"][1].update(gold_label=5), "questions[1].gold_label", "out of range"),
        (lambda r: r["questions"][1].update(gold_label="2"), "questions[1].gold_label", "expected int"),
        (lambda r: r["questions"][0]["validation"][1].update(untimed_answer=0),
         "questions[0].validation[1].untimed_answer", "out of range"),
        (lambda r: r["questions"][0]["validation"][2].pop("untimed_eval3_distractor"),
         "questions[0].validation[2].untimed_eval3_distractor", "missing"),
        (lambda r: r["questions"][3].pop("difficult"), "questions[3].difficult", "missing"),
        (lambda r: r["questions"][3].pop("question_unique_id"), "questions[3].question_unique_id", "missing"),
        (lambda r: r["questions"][0]["options"].__setitem__(1, None), "questions[0].options[1]", "expected str"),
    ],
)
def test_malformed_record_names_file_line_field(tmp_path, mutate, field, message):
    path = _write(tmp_path, _record(), _mutated(mutate))
    with pytest.raises(DataError, match=message) as err:
        read_quality(path)
    assert (err.value.path, err.value.line, err.value.field) == (path, 2, field)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_bad_json_and_non_object_lines(tmp_path):
    path = _write(tmp_path, _record(), "", '{"article_id": "1", oops}')
    with pytest.raises(DataError, match="invalid JSON") as err:
        read_quality(path)
    assert err.value.line == 3  # blank line 2 is skipped but still counted
    with pytest.raises(DataError, match="expected a JSON object") as err:
        read_quality(_write(tmp_path, "[1, 2]"))
    assert err.value.line == 1


def test_unlabeled_file_is_a_clear_error_and_mixed_file_warns(tmp_path):
    def unlabel(r: dict) -> None:
        for q in r["questions"]:
            for key in ("gold_label", "writer_label", "validation", "speed_validation", "difficult"):
                q.pop(key, None)

    official_test = _write(tmp_path, _mutated(unlabel), name="QuALITY.v1.0.1.test")
    with pytest.raises(DataError, match="official QuALITY test split is unlabeled.*dev file") as err:
        read_quality(official_test, split="test")
    assert err.value.field == "gold_label"

    partly = _mutated(lambda r: r["questions"][0].pop("gold_label"))
    with pytest.warns(UserWarning, match="skipped 1 questions without gold_label"):
        qs = read_quality(_write(tmp_path, partly))
    assert [q.question_id for q in qs] == list(EXPECTED)[1:]
