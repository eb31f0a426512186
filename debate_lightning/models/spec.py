"""A model as a config names it (``ModelSpec``), and the typed options of the local backend.

Light on purpose (no torch, no transformers): tournament and training configs are parsed and
checked before any model loads, so a wrong option fails when the config loads, naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HFOptions:
    """Options of the ``hf`` backend (a model's ``options:`` in a config).

    Attributes:
        accel: use the CPU engine (``debate_lightning.accel``) where it is on: CPU devices that
            pass its self-check. Other devices always run stock transformers.
        prefix_cache: keep KV caches of token prefixes (a story's system message, a debater's
            last turn) and reuse them across calls.
        prefix_cache_size: most entries in the prefix cache.
        prefix_cache_gb: most gigabytes of KV in the prefix cache.
        score_token_budget: most padded tokens per teacher-forced scoring forward.
        lean_decode: the engine's decode loop (Llama-family models) instead of ``generate``.
        packed_linear: the engine's packed oneDNN linears for frozen fp32 weights.
        fused_modules: the engine's one-call RMSNorm/MLP and trimmed last layer.
        gguf_file: the GGUF file inside ``path`` (a ``.gguf`` path finds it by itself).
        load_in_4bit: NF4 weights (bitsandbytes, the ``[quant]`` extra) on this process's GPU, for
            judges and debaters larger than its memory; CUDA only (elsewhere an error).
    """

    accel: bool = True
    prefix_cache: bool = True
    prefix_cache_size: int = 256
    prefix_cache_gb: float = 4.0
    score_token_budget: int = 1024
    lean_decode: bool = True
    packed_linear: bool = True
    fused_modules: bool = True
    gguf_file: str | None = None
    load_in_4bit: bool = False

    def __post_init__(self) -> None:
        if self.prefix_cache and (self.prefix_cache_size < 1 or self.prefix_cache_gb <= 0):
            raise ValueError(
                f"prefix_cache_size must be >= 1 and prefix_cache_gb > 0 (got {self.prefix_cache_size}, "
                f"{self.prefix_cache_gb}); set prefix_cache: false to turn the cache off")
        if self.score_token_budget < 1:
            raise ValueError(f"score_token_budget must be >= 1, got {self.score_token_budget}")

    @classmethod
    def parse(cls, options: dict[str, Any], where: str = "options") -> HFOptions:
        """``options`` as HFOptions; an unknown key is a ValueError naming it and ``where``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{where}: unknown hf option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


@dataclass
class ModelSpec:
    """A model in a config.

    Attributes:
        backend: ``hf`` (local transformers), ``openai``, ``anthropic``, ``openai_compatible``
            (vLLM, ``serve``), or scripted ``random`` / ``deterministic`` / ``replay``.
        path: local directory, hub id, ``.gguf`` file, or ``embedded`` (hf backend).
        model: the API model name (API backends).
        dtype: ``auto`` picks bfloat16 where the hardware runs it fast, else float32.
        device: ``auto`` (CUDA where there is a GPU, else the CPU), ``cpu``, ``cuda``, ``cuda:1``.
        adapter: a PEFT adapter directory to load on top (hf backend).
        max_batch_size: most sequences per forward/generate call (hf backend).
        base_url: the server URL (openai_compatible).
        debater: ``offline``: which debater of the earlier run to replay (optional when it had one).
        trust_remote_code: let transformers run code shipped with the model (off unless you trust it).
        options: backend options. ``hf``: the fields of ``HFOptions`` (checked when the config
            loads); API backends: ``max_concurrency``, ``timeout``, … (see ``models/api.py``).
    """

    backend: str = "hf"
    path: str = "embedded"
    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    adapter: str | None = None
    max_batch_size: int = 32
    base_url: str | None = None
    debater: str | None = None
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend == "hf":
            HFOptions.parse(self.options, where=f"model {self.path!r} options")

    def hf_options(self) -> HFOptions:
        return HFOptions.parse(self.options, where=f"model {self.path!r} options")
