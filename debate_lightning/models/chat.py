"""Chat tokenisation: the ONE place a chat becomes token ids (generation, scoring and training).

A debater's prompt at training time must be token for token the prompt it was sampled from, so
the generator and the trainers share these two functions instead of each rendering its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def chat_ids(tokenizer: Any, chat: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """The chat rendered with the model's template; with ``add_generation_prompt`` it ends with
    the assistant prompt (the position where the answer starts)."""
    ids = tokenizer.apply_chat_template(list(chat), add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def text_ids(tokenizer: Any, text: str, eos: bool = False) -> list[int]:
    """A continuation's tokens (no special tokens), followed by the end-of-turn token when ``eos``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [*ids, tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else list(ids)


def system_prefix_len(tokenizer: Any, chat: Sequence[dict[str, str]], prompt: Sequence[int]) -> int:
    """How many leading tokens of ``prompt`` are the chat's system message (0 if not a clean prefix).

    Debate prompts keep the story in the system message, shared by both sides and every turn,
    so its KV can be computed once per story instead of once per speech.
    """
    if not chat or chat[0].get("role") != "system" or len(chat) < 2:
        return 0
    ids = chat_ids(tokenizer, chat[:1], add_generation_prompt=False)
    n = len(ids)
    return n if n < len(prompt) and list(prompt[:n]) == ids else 0
