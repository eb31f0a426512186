"""Shared fixtures: the real embedded tokenizer and a tiny random Llama that uses it.

The tiny model (2 layers, 32 wide) runs in milliseconds, so module tests exercise real
transformers code paths (chat template, padding, generation, scoring) without the real weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (probe_files)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def embedded_dir():
    from debate_lightning.models.embedded import prepare

    return prepare()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A random 2-layer, 32-wide Llama saved with the real SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_generator(tiny_model_dir):
    from debate_lightning.models.hf import HFGenerator

    return HFGenerator(path=str(tiny_model_dir), dtype="float32", name="tiny", max_batch_size=8)


@pytest.fixture
def questions():
    from debate_lightning.data.synthetic import generate

    return generate(2, seed=0)[:3]
