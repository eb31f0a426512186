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
    assert "mine" in chat[1]["content"] and "theirs" not in chat[1]["content"]


def test_judge_swap_swaps_answers_and_labels(questions):
    q = questions[0]
    tr = Transcript(q, Format(kind="debate"))
    tr.speeches.append(Speech(0, 0, "first side speaks"))
    p = prompts_for(tr.format)
    normal = tr.judge_chat(p)[1]["content"]
    swapped = tr.judge_chat(p, swap=True)[1]["content"]
    assert f"A: {q.positions[0]}" in normal and f"A: {q.positions[1]}" in swapped
    assert "Debater A: first side speaks" in normal and "Debater B: first side speaks" in swapped
