"""Frozen fp32 linear layers: PyTorch's default GEMM against packed oneDNN weights
(``debate_lightning/accel/packed_linear.py``), side by side.

The shapes are the embedded model's projections (576 wide, 1536 MLP, 49152 vocabulary) at the row
counts the package runs: 1 (one-at-a-time decode), 16 and 32 (batched decode), and 2752 (a prefill
or a DPO batch). Each product cycles through enough distinct weights to leave the CPU caches, as a
real forward pass does.

    python benchmarks/linear.py

The last line is ``ratio: X``: packed over default GFLOP/s, summed over the shapes. ``make bench``
runs it with the other benchmarks; figures: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from debate_lightning.accel import packed_linear_available as available, packed_matmul

SHAPES = [(1536, 576), (576, 1536), (576, 576), (49152, 576)]


def _seconds(fn, inputs, repeat: int) -> float:
    for x in inputs[:2]:
        fn[0](x)
    start = time.perf_counter()
    for r in range(repeat):
        for f, x in zip(fn, inputs):
            f(x)
    return (time.perf_counter() - start) / (repeat * len(fn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32, 2752])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not available():
        raise SystemExit("oneDNN packed linear is not available in this torch build (or DEBATE_LIGHTNING_PACKED_LINEAR=0)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    total_default = total_packed = 0.0
    for rows in args.rows:
        for n, k in SHAPES:
            copies = max(2, (256 << 20) // (n * k * 4))  # >= 256 MB of weights: out of cache
            weights = [torch.randn(n, k) for _ in range(copies)]
            x = torch.randn(rows, k)
            default = [lambda x, w=w: F.linear(x, w) for w in weights]
            packed = [packed_matmul(w) for w in weights]
            repeat = max(1, args.repeat * (32 if rows <= 32 else 1))
            flop = 2 * rows * n * k
            g_default = flop / _seconds(default, [x] * copies, repeat) / 1e9
            g_packed = flop / _seconds(packed, [x] * copies, repeat) / 1e9
            total_default += g_default
            total_packed += g_packed
            print(f"rows {rows:5d}  {n:6d}x{k:<5d}  default {g_default:7.1f} GFLOP/s   packed {g_packed:7.1f} GFLOP/s   "
                  f"x{g_packed / g_default:.2f}", flush=True)
    print(f"ratio: {total_packed / total_default:.2f}")


if __name__ == "__main__":
    main()
