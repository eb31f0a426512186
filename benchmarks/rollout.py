"""Rollout speed: the batched debate engine against one-speech-at-a-time generation.

Both sides play the same debate rounds on the same loaded embedded model, with the same
sampling settings and dtype, and fixed-length speeches (min = max new tokens), so both generate
exactly the same number of tokens. The baseline is how the old research code effectively ran:
a stock transformers model, one ``model.generate`` call per speech at batch 1, no prompt reuse,
and one judge forward per transcript. The engine gathers every pending speech of every round into
one batched call per turn and, in ``HFGenerator`` (``models/hf.py``): carries each debater's KV
cache over from its last turn (the chat of a turn extends the last one), so a turn prefills only
the opponent's new speech; prefills rows in groups of similar new-token counts; and, through the
optional CPU engine ``debate_lightning/accel/`` (on for CPU devices where it passes its probes),
decodes with the lean loop (``accel/decode.py``) on the native CPU kernels where they build
(``accel/native/``: small-batch GEMM on packed weights, decode attention reading a story's KV once
per group of rows sharing it, one-call RMSNorm/SiLU/rotary/sampling), and runs its other forwards
(prefill, judging) through packed oneDNN linears (``accel/packed_linear.py``), native RMSNorm/MLP
ops (``accel/fused_modules.py``) and a last layer computed at the last position only
(``accel/last_position.py``). The judge scores its transcripts in token order, each after the KV
of the start it shares with the one before, and every causal forward's attention runs on the native
kernel (``accel/lower_right_attention.py``, ``accel/native/causal_attention.c``). Both sides play
the same chats (same prompt set, same tokens).
Speech and judging times are printed apart: judging is a compute-bound forward over every
transcript (twice, both orders) on both sides, so it bounds the whole-round ratio. The engine
plays the rounds before and after the baseline (its KV cache emptied before each run) and its
figures are the mean of the two, so both sides see the same stretch of a machine whose speed
drifts by 10-20% over minutes.

    python benchmarks/rollout.py                 # 16 rounds, 2 speeches per debater, 128 tokens
    python benchmarks/rollout.py --rounds 4 --max-new-tokens 16   # a quick smoke run

The last line is ``ratio: X`` (engine debates/min over baseline debates/min). ``make bench`` runs it
with the other benchmarks; figures and their history: ``docs/performance.md``.
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
from debate_lightning.models.loading import auto_dtype  # noqa: E402


def play(specs, generator, params, judge_generator, one_at_a_time: bool) -> tuple[float, float, int]:
    """Play and judge ``specs``; return (speech seconds, judging seconds, generated tokens)."""
    debaters = {"policy": Debater("policy", generator, params)}
    judge = Judge(judge_generator, both_orders=True)
    groups = [[s] for s in specs] if one_at_a_time else [list(specs)]
    tokens, speaking, judging = 0, 0.0, 0.0
    for group in groups:
        start = time.perf_counter()
        transcripts = play_speeches(group, debaters)
        middle = time.perf_counter()
        judge_transcripts(group, transcripts, judge)
        speaking, judging = speaking + middle - start, judging + time.perf_counter() - middle
        tokens += sum(s.num_tokens for t in transcripts for s in t.speeches)
    return speaking, judging, tokens


def report(label: str, rounds: int, speaking: float, judging: float, tokens: int) -> float:
    """Print one line of figures; return debates per minute."""
    total = speaking + judging
    rate = 60 * rounds / total
    print(f"{label + ':':<20} {total:8.1f} s  {rate:7.2f} debates/min   speeches {speaking:7.1f} s "
          f"({tokens / speaking:6.1f} tok/s)   judging {judging:6.1f} s", flush=True)
    return rate


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
    # The same weights, loaded the old way: stock linears, generate() at batch 1, no prefix reuse.
    single_gen = HFGenerator(dtype=dtype, max_batch_size=1, prefix_cache=False, accel=False, name="single")
    if not engine_gen.accel:
        from debate_lightning import accel

        print(f"warning: the CPU engine is off ({accel.reason_off('cpu')}); the engine side runs stock transformers")
    questions = load_questions("synthetic", split="val", limit=(args.rounds + 1) // 2, seed=args.seed, both_orders=True)
    fmt = Format(kind="debate", num_speeches=args.speeches)
    specs = [RoundSpec(q, fmt, ("policy", "policy")) for q in questions[: args.rounds]]
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    print(f"{len(specs)} rounds, {args.speeches} speeches per debater, {args.max_new_tokens} tokens per speech, dtype {dtype}")

    # Warm up both paths once (allocator, kernels, packing the engine's weights) on a tiny budget.
    warm = SamplingParams(max_new_tokens=2, min_new_tokens=2, temperature=args.temperature)
    play(specs[:1], single_gen, warm, single_gen, one_at_a_time=True)
    play(specs[:1], engine_gen, warm, engine_gen, one_at_a_time=False)
    engine_gen.clear_cache()

    # This machine's speed drifts by 10-20% over minutes: the engine runs before and after the
    # baseline's ~16 minutes (its cache emptied each time), and its figures are the mean of the two.
    n = len(specs)
    runs: dict[str, list[tuple[float, float]]] = {"engine": [], "one-at-a-time": []}
    for label, gen, alone in (("engine", engine_gen, False), ("one-at-a-time", single_gen, True), ("engine", engine_gen, False)):
        gen.clear_cache()
        speaking, judging, tokens = play(specs, gen, params, gen, one_at_a_time=alone)
        assert tokens == n * 2 * args.speeches * args.max_new_tokens, tokens
        runs[label].append((speaking, judging))
        report(f"{label} run {len(runs[label])}", n, speaking, judging, tokens)
    speaking_of, rates = {}, {}
    for label, pairs in runs.items():
        speaking_of[label] = sum(p[0] for p in pairs) / len(pairs)
        judging = sum(p[1] for p in pairs) / len(pairs)
        rates[label] = report(label, n, speaking_of[label], judging, tokens)
    print(f"engine stats: {engine_gen.stats}")
    print(f"speeches only (generation, no judging): {speaking_of['one-at-a-time'] / speaking_of['engine']:.2f}x faster")
    print(f"ratio: {rates['engine'] / rates['one-at-a-time']:.2f}")


if __name__ == "__main__":
    main()
