"""A tiny random Llama (2 layers, 32 wide) with the embedded model's real tokenizer.

Saved once per session to a tmp directory, so every test loads it the way users load a model.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = [{"role": "system", "content": "You are Debater A. Argue for «Ann»."},
          {"role": "user", "content": "Who found the key? Give your first speech."}]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from debate_lightning.models.embedded import prepare

    tokenizer = AutoTokenizer.from_pretrained(prepare())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_policy(tiny_model):
    """The tiny model with LoRA adapters (r=4), and its tokenizer."""
    from debate_lightning.training.policy import LoraSpec, build_policy

    return build_policy(tiny_model, lora=LoraSpec(r=4, alpha=8))


def write_pairs(path, n: int = 8, seed: int = 0) -> str:
    """``n`` preference pairs with varied lengths and soft preferences, as JSONL."""
    import random

    rng = random.Random(seed)
    words = "the key was under the mat said Ann while Bob looked at the door quote story".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            prompt = [PROMPT[0], {"role": "user", "content": PROMPT[1]["content"] + " " + " ".join(
                rng.choice(words) for _ in range(rng.randint(3, 30)))}]
            chosen = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
            rejected = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                                "preference": round(rng.uniform(0.6, 1.0), 3), "meta": {"i": i}}) + "\n")
    return str(path)


@pytest.fixture
def pairs_file(tmp_path) -> str:
    return write_pairs(tmp_path / "pairs.jsonl")


@pytest.fixture
def make_pairs():
    """``make_pairs(path, n=8, seed=0)`` writes a pairs JSONL and returns its path."""
    return write_pairs
