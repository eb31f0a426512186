import pytest

from debate_lightning.prompts.render import available, load_prompt_set


def test_builtin_sets_load_and_render():
    assert {"debate", "consultancy", "empty"} <= set(available())
    p = load_prompt_set("debate")
    text = p.render("debater_system", story="Once upon a time.", word_limit=50)
    assert "Once upon a time." in text and "50 words" in text


def test_user_prompt_set_from_file(tmp_path):
    path = tmp_path / "mine.yaml"
    base = load_prompt_set("debate").templates
    path.write_text("".join(f"{k}: |\n  {v.strip().replace(chr(10), chr(10) + '  ')}\n" for k, v in base.items()))
    p = load_prompt_set(str(path))
    assert p.name == "mine"
    assert p.render("judge_decision").startswith("Which answer")


def test_unknown_placeholder_names_file_and_template(tmp_path):
    path = tmp_path / "bad.yaml"
    templates = {k: "x" for k in ("debater_system", "debater_turn", "judge_system", "judge_user", "transcript_entry")}
    templates["judge_decision"] = "Pick {winner}"
    path.write_text("\n".join(f"{k}: {v!r}" for k, v in templates.items()))
    with pytest.raises(ValueError) as e:
        load_prompt_set(str(path))
    assert str(path) in str(e.value) and "judge_decision" in str(e.value) and "{winner}" in str(e.value)


def test_missing_set_lists_builtins():
    with pytest.raises(FileNotFoundError, match="debate"):
        load_prompt_set("no_such_set")
