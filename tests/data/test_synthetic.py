"""The built-in generated dataset: determinism, readable sizes, fair distractors, splits."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from debate_lightning.data.synthetic import NUM_KINDS, generate, generate_story, split_of_index


@pytest.fixture(scope="module")
def many():
    return generate(300, seed=7, questions_per_story=6)


def test_same_seed_same_data_whatever_the_global_rng():
    random.seed(1)
    a = [q.to_dict() for q in generate(6, seed=3)]
    random.seed(999)
    state = random.getstate()
    b = [q.to_dict() for q in generate(6, seed=3)]
    assert a == b
    assert random.getstate() == state  # generating does not consume the global RNG either


def test_different_seeds_differ_and_stories_do_not_depend_on_count():
    assert [q.story for q in generate(3, seed=0)] != [q.story for q in generate(3, seed=1)]
    few, more = generate(3, seed=5), generate(10, seed=5)
    assert [q.to_dict() for q in few] == [q.to_dict() for q in more[: len(few)]]


def test_word_counts_in_range():
    counts = [generate_story(i, seed).num_words for seed in range(3) for i in range(200)]
    assert 150 <= min(counts) and max(counts) <= 400
    assert max(counts) - min(counts) > 50  # lengths vary, not one template


def test_both_positions_differ_and_appear_in_story(many):
    assert len(many) == 300 * 6
    for q in many:
        a, b = q.positions
        assert a != b
        assert a in q.story and b in q.story, (q.question, q.positions)
        assert q.question.endswith("?")


def test_answers_are_checkable_against_the_facts():
    for i in range(50):
        story = generate_story(i, seed=2, questions_per_story=NUM_KINDS)
        f = story.facts
        assert f"{f['hero']} bought {f['n1']} {f['goods']}" in story.text
        assert f"{f['friend']} bought {f['n2']}" in story.text
        e1, e2, e3 = f["errands"]
        assert story.text.index(e1) < story.text.index(e2) < story.text.index(e3)
        assert f"{f['t2']} {f['vehicle2']} to {f['town3']}" in story.text
        kinds = {kind: (correct, wrong) for kind, _, correct, wrong in story.items}
        assert kinds["count"] == (f["n1"], f["n2"])
        assert kinds["gift"] == (f["obj1"], f["obj2"])
        assert kinds["first"][0] == e1 and kinds["last"][0] == e3


def test_correct_index_balanced(many):
    share = sum(q.correct_index for q in many) / len(many)
    assert 0.45 < share < 0.55
    assert all(q.correct_position == q.positions[q.correct_index] for q in many)


def test_blind_heuristics_are_at_chance(many):
    """A judge without the story cannot win by picking the longer or alphabetically first option."""
    longer = [q for q in many if len(q.positions[0]) != len(q.positions[1])]
    by_length = sum(len(q.correct_position) > len(q.positions[1 - q.correct_index]) for q in longer) / len(longer)
    by_alpha = sum(q.correct_position < q.positions[1 - q.correct_index] for q in many) / len(many)
    assert 0.4 < by_length < 0.6
    assert 0.4 < by_alpha < 0.6


def test_split_by_story_disjoint_and_all_present(many):
    splits_of_story = defaultdict(set)
    for q in many:
        splits_of_story[q.story_id].add(q.split)
    assert all(len(s) == 1 for s in splits_of_story.values())
    counts = defaultdict(int)
    for s in splits_of_story.values():
        counts[next(iter(s))] += 1
    assert counts == {"train": 240, "val": 30, "test": 30}
    assert {q.split for q in generate(10)} == {"train", "val", "test"}
    assert [split_of_index(i) for i in range(10)] == ["train"] * 8 + ["val", "test"]


def test_requesting_a_split_gives_that_many_stories_of_it():
    test = generate(5, seed=1, split="test")
    train = generate(20, seed=1, split="train")
    assert len({q.story_id for q in test}) == 5 and {q.split for q in test} == {"test"}
    assert {q.story_id for q in test}.isdisjoint({q.story_id for q in train})


def test_ids_are_unique_and_stable():
    qs = generate(30, seed=4, questions_per_story=5)
    assert len({q.question_id for q in qs}) == len(qs)
    assert len({q.uid for q in qs + [q.swapped() for q in qs]}) == 2 * len(qs)
    assert qs[0].question_id == generate(1, seed=4, questions_per_story=5)[0].question_id


def test_bad_arguments():
    with pytest.raises(ValueError, match="questions_per_story"):
        generate(1, questions_per_story=NUM_KINDS + 1)
    with pytest.raises(ValueError, match="split"):
        generate(1, split="dev")
    with pytest.raises(ValueError, match="num_stories"):
        generate(-1)
    assert generate(0) == []
