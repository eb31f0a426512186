"""Loading local models: dtypes, devices, transformers checkpoints (directories, hub ids, GGUF,
``embedded``) and PEFT adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from debate_lightning.models.embedded import EMBEDDED, resolve

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def resolve_device(device: str) -> str:
    """``auto``: CUDA where there is a GPU, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def auto_dtype(device: str) -> str:
    """bfloat16 where it is fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), float32 elsewhere.

    On CPUs without native bf16 instructions bf16 matmuls fall back to a slow path (measured
    here: 0.3 GFLOP/s against 97 for fp32), so ``auto`` must not pick it blindly.
    """
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def load_model_and_tokenizer(
    path: str = EMBEDDED,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    adapter: str | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer from a directory, a hub id, a GGUF file or ``embedded``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is None and str(source).endswith(".gguf"):
        source, gguf_file = Path(source).parent, Path(source).name
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    local = isinstance(source, Path) or str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1
    if local and not Path(source).expanduser().exists():  # a hub id is "name" or "org/name"
        raise FileNotFoundError(f"model directory {source} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=parse_dtype(dtype), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).exists():
            raise FileNotFoundError(f"PEFT adapter directory {adapter} does not exist")
        model = PeftModel.from_pretrained(model, adapter)
    model.to(device)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module, inference: bool = True) -> Iterator[None]:
    """No grad and dropout off for the duration; the previous training mode comes back after.

    A live training policy generates rollouts through this, so it must not stay in eval mode.
    ``inference=False``: ``no_grad`` instead of ``inference_mode`` (FSDP's gathered weights must
    stay ordinary tensors).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            yield
    finally:
        model.train(was_training)
