"""Registers the ``hf`` backend; keeps transformers out of imports until a local model is built."""

from __future__ import annotations

from debate_lightning.models.registry import ModelSpec, register


def auto_dtype(device: str) -> str:
    """bfloat16 where it is fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), float32 elsewhere.

    On CPUs without native bf16 instructions bf16 matmuls fall back to a slow path (measured
    here: 0.3 GFLOP/s against 97 for fp32), so ``auto`` must not pick it blindly.
    """
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


@register("hf")
def build_hf(spec: ModelSpec, name: str):
    import torch

    from debate_lightning.models.hf import HFGenerator

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = auto_dtype(device) if spec.dtype == "auto" else spec.dtype
    return HFGenerator(
        path=spec.path,
        dtype=dtype,
        device=device,
        adapter=spec.adapter,
        max_batch_size=spec.max_batch_size,
        trust_remote_code=spec.trust_remote_code,
        name=name,
        **spec.options,
    )
