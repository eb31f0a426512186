"""Rollout speed: the batched debate engine against one-speech-at-a-time generation.

Both sides play the same debate rounds on the same loaded embedded model, with the same
sampling settings and dtype, and fixed-length speeches (min = max new tokens), so both generate
exactly the same number of tokens. The baseline is how the old research code effectively ran:
one ``generate`` call per speech at batch 1, no prompt reuse. The engine gathers every pending
speech of every round into one batched call per turn and reuses each story's KV prefix.

    python benchmarks/rollout.py                 # 16 rounds, 2 speeches per debater, 128 tokens
    python benchmarks/rollout.py --rounds 4 --max-new-tokens 16   # a quick smoke run

The last line is ``ratio: X`` (engine debates/min over baseline debates/min).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from debate_lightning.data.loading import load_questions  # noqa: E402
from debate_lightning.debate.agents import Debater, Judge  # noqa: E402
from debate_lightning.debate.engine import RoundSpec, judge_transcripts, play_speeches  # noqa: E402
from debate_lightning.debate.formats import Format  # noqa: E402
from debate_lightning.models.base import SamplingParams  # noqa: E402
from debate_lightning.models.hf import HFGenerator  # noqa: E402
from debate_lightning.models.hf_factory import auto_dtype  # noqa: E402


def play(specs, generator, params, judge_generator, one_at_a_time: bool) -> tuple[float, int]:
    """Play and judge ``specs``; return (seconds, generated tokens)."""
    debaters = {"policy": Debater("policy", generator, params)}
    judge = Judge(judge_generator, both_orders=True)
    start = time.perf_counter()
    groups = [[s] for s in specs] if one_at_a_time else [list(specs)]
    tokens = 0
    for group in groups:
        transcripts = play_speeches(group, debaters)
        judge_transcripts(group, transcripts, judge)
        tokens += sum(s.num_tokens for t in transcripts for s in t.speeches)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--speeches", type=int, default=2, help="speeches per debater")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dtype = auto_dtype("cpu") if args.dtype == "auto" else args.dtype
    engine_gen = HFGenerator(dtype=dtype, max_batch_size=args.max_batch_size, name="engine")
    # The same weights in memory, used the old way: batch 1, no prefix reuse.
    single_gen = HFGenerator(
        model=engine_gen.model, tokenizer=engine_gen.tokenizer, max_batch_size=1, prefix_cache=False, name="single"
    )
    questions = load_questions("synthetic", split="val", limit=(args.rounds + 1) // 2, seed=args.seed, both_orders=True)
    fmt = Format(kind="debate", num_speeches=args.speeches)
    specs = [RoundSpec(q, fmt, ("policy", "policy")) for q in questions[: args.rounds]]
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    print(f"{len(specs)} rounds, {args.speeches} speeches per debater, {args.max_new_tokens} tokens per speech, dtype {dtype}")

    # Warm up both paths once (allocator, kernels) on a tiny budget.
    warm = SamplingParams(max_new_tokens=2, min_new_tokens=2, temperature=args.temperature)
    play(specs[:1], single_gen, warm, single_gen, one_at_a_time=True)
    engine_gen.prefixes.clear()

    t_engine, tok_engine = play(specs, engine_gen, params, engine_gen, one_at_a_time=False)
    t_single, tok_single = play(specs, single_gen, params, single_gen, one_at_a_time=True)
    n = len(specs)
    dpm_engine, dpm_single = 60 * n / t_engine, 60 * n / t_single
    print(f"engine:        {t_engine:8.1f} s  {dpm_engine:7.2f} debates/min  {tok_engine / t_engine:7.1f} speech tok/s")
    print(f"one-at-a-time: {t_single:8.1f} s  {dpm_single:7.2f} debates/min  {tok_single / t_single:7.1f} speech tok/s")
    print(f"engine stats: {engine_gen.stats}")
    assert tok_engine == tok_single == n * 2 * args.speeches * args.max_new_tokens, (tok_engine, tok_single)
    print(f"ratio: {dpm_engine / dpm_single:.2f}")


if __name__ == "__main__":
    main()
