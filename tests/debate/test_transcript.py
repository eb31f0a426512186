import pytest

from debate_lightning.debate.agents import prompts_for
from debate_lightning.debate.formats import Format
from debate_lightning.debate.transcript import Speech, Transcript


def test_debater_sees_story_judge_does_not(questions):
    q = questions[0]
    tr = Transcript(q, Format(kind="debate", num_speeches=1))
    tr.speeches.append(Speech(side=0, step=0, text="A is right."))
    p = prompts_for(tr.format)
    debater = tr.debater_chat(1, p)
    assert q.story in debater[0]["content"]
    assert "Debater A: A is right." in debater[1]["content"]
    assert q.positions[1] in debater[1]["content"]
    judge = "\n".join(m["content"] for m in tr.judge_chat(p))
    assert q.story not in judge and "A is right." in judge


def test_system_prompt_shared_by_both_sides(questions):
    # The prefix cache relies on both sides and every turn sharing the system prompt.
    tr = Transcript(questions[0], Format(kind="debate"))
    p = prompts_for(tr.format)
    assert tr.debater_chat(0, p)[0] == tr.debater_chat(1, p)[0]


def test_double_consultancy_is_blind(questions):
    tr = Transcript(questions[0], Format(kind="double_consultancy"))
    tr.speeches += [Speech(0, 0, "mine"), Speech(1, 0, "theirs")]
    chat = tr.debater_chat(0, prompts_for(tr.format))
    seen = "\n".join(m["content"] for m in chat[1:])
    assert "mine" in seen and "theirs" not in seen
    assert chat[2] == {"role": "assistant", "content": "mine"}


@pytest.mark.parametrize("simultaneous", [False, True])
def test_each_turn_extends_the_debaters_previous_chat(questions, simultaneous):
    """Own speeches are assistant messages; the next turn's chat starts with the last turn's chat
    plus the speech written, which is what lets a KV cache carry over between turns."""
    fmt = Format(kind="debate", num_speeches=3, simultaneous=simultaneous)
    tr, p = Transcript(questions[0], fmt), prompts_for(fmt)
    before: dict[int, list] = {}
    for step, sides in enumerate(fmt.steps()):
        written = []
        for side in sides:
            chat = tr.debater_chat(side, p)
            if side in before:
                assert chat[: len(before[side])] == before[side]
                # the new user message brings exactly the other side's speeches since this side's last one
                assert chat[-1]["role"] == "user"
                assert [s for s in ("A-", "B-") if s in chat[-1]["content"]] == [("A-", "B-")[1 - side]]
            written.append(Speech(side, step, f"{'AB'[side]}-{step}"))
            before[side] = [*chat, {"role": "assistant", "content": written[-1].text}]
        tr.speeches += written  # simultaneous speakers are blind to each other's speech of the step
    chat = tr.debater_chat(0, p)
    assert [m["content"] for m in chat if m["role"] == "assistant"] == [s.text for s in tr.speeches if s.side == 0]
    assert "of 3" in chat[1]["content"] and "Give speech 4" in chat[-1]["content"]


def test_prompt_set_without_next_turn_gives_the_transcript_in_one_message(questions, tmp_path):
    import yaml

    from debate_lightning.prompts.render import load_prompt_set

    data = yaml.safe_load(open(prompts_for(Format()).source))
    del data["debater_next_turn"]
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(data))
    tr = Transcript(questions[0], Format(kind="debate"))
    tr.speeches += [Speech(0, 0, "opening"), Speech(1, 1, "reply")]
    chat = tr.debater_chat(0, load_prompt_set(str(path)))
    assert [m["role"] for m in chat] == ["system", "user"]
    assert "Debater A: opening" in chat[1]["content"] and "Debater B: reply" in chat[1]["content"]
    assert "Give speech 2" in chat[1]["content"]


def test_judge_swap_swaps_answers_and_labels(questions):
    q = questions[0]
    tr = Transcript(q, Format(kind="debate"))
    tr.speeches.append(Speech(0, 0, "first side speaks"))
    p = prompts_for(tr.format)
    normal = tr.judge_chat(p)[1]["content"]
    swapped = tr.judge_chat(p, swap=True)[1]["content"]
    assert f"A: {q.positions[0]}" in normal and f"A: {q.positions[1]}" in swapped
    assert "Debater A: first side speaks" in normal and "Debater B: first side speaks" in swapped
