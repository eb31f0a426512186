import pytest

from debate_lightning.debate.formats import Format


def test_sequential_debate_alternates():
    assert Format(kind="debate", num_speeches=2).steps() == [(0,), (1,), (0,), (1,)]


def test_simultaneous_and_double_consultancy():
    assert Format(kind="debate", num_speeches=2, simultaneous=True).steps() == [(0, 1), (0, 1)]
    dc = Format(kind="double_consultancy", num_speeches=1)
    assert dc.steps() == [(0, 1)]
    assert not dc.sees(0, 1) and dc.sees(0, 0)


def test_consultancy_and_empty():
    c = Format(kind="consultancy", num_speeches=3, consultant_side=1)
    assert c.steps() == [(1,), (1,), (1,)] and c.sides == (1,) and c.name == "consultancy1"
    e = Format(kind="empty", num_speeches=0)
    assert e.steps() == [] and e.sides == () and e.prompts == "empty"


def test_bad_format_errors():
    with pytest.raises(ValueError, match="unknown format kind"):
        Format(kind="duel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_speeches"):
        Format(kind="debate", num_speeches=0)
