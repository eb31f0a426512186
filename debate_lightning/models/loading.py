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


def local_cuda_device() -> str:
    """This process's GPU: ``cuda:<local rank>`` from the launcher (``LOCAL_RANK``, or Slurm's
    ``SLURM_LOCALID``), ``cuda:0`` in a single process."""
    import os

    return f"cuda:{int(os.environ.get('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0')))}"


def nf4_config(dtype: str | torch.dtype) -> Any:
    """bitsandbytes 4-bit NF4 weights (QLoRA's), computing in ``dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=parse_dtype(dtype),
                              bnb_4bit_use_double_quant=True)


def check_4bit(device: str, where: str) -> None:
    """4-bit needs CUDA (bitsandbytes' NF4 kernels); anything else is a ValueError naming ``where``."""
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"{where}: load_in_4bit needs a CUDA GPU (bitsandbytes NF4), but this runs on "
                         f"{device!r}{'' if torch.cuda.is_available() else ' and no GPU is visible'}; set "
                         "load_in_4bit: false, or run on a GPU node with the [quant] extra installed")


def load_model_and_tokenizer(
    path: str = EMBEDDED,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    adapter: str | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
):
    """Load a causal LM and its tokenizer from a directory, a hub id, a GGUF file or ``embedded``.

    ``load_in_4bit``: NF4 weights on this process's GPU (``device_map`` pins the whole model to
    ``cuda:<local rank>``, so every DDP rank quantizes its own replica on its own GPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if load_in_4bit:
        check_4bit(resolve_device(device), f"model {path}")
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
    if load_in_4bit:
        device = local_cuda_device() if resolve_device(device) == "cuda" else device
        kwargs.update(quantization_config=nf4_config(dtype), device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=parse_dtype(dtype), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).exists():
            raise FileNotFoundError(f"PEFT adapter directory {adapter} does not exist")
        model = PeftModel.from_pretrained(model, adapter)
    if not load_in_4bit:  # a quantized model was placed by its device_map
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
