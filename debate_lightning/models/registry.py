"""Build a ``Generator`` from a config entry (``ModelSpec``), by backend name.

Backends register a factory here; configs name them with ``backend:``. Factories import their
heavy dependencies lazily, so a scripted test never imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from debate_lightning.models.base import Generator


@dataclass
class ModelSpec:
    """A model in a config.

    Attributes:
        backend: ``hf`` (local transformers), ``openai``, ``anthropic``, ``openai_compatible``
            (vLLM, ``serve``), or scripted ``random`` / ``deterministic`` / ``replay``.
        path: local directory, hub id, ``.gguf`` file, or ``embedded`` (hf backend).
        model: the API model name (API backends).
        dtype: ``auto`` picks bfloat16 where the hardware runs it fast, else float32.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto``.
        adapter: a PEFT adapter directory to load on top (hf backend).
        max_batch_size: most sequences per forward/generate call (hf backend).
        base_url: the server URL (openai_compatible).
        options: anything else the backend accepts (e.g. ``max_concurrency``, ``timeout``).
    """

    backend: str = "hf"
    path: str = "embedded"
    model: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    adapter: str | None = None
    max_batch_size: int = 32
    base_url: str | None = None
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[ModelSpec, str], Generator]
_FACTORIES: dict[str, Factory] = {}


def register(backend: str) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        _FACTORIES[backend] = factory
        return factory

    return wrap


def backends() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def build_generator(spec: ModelSpec, name: str = "model") -> Generator:
    _load_builtin()
    try:
        factory = _FACTORIES[spec.backend]
    except KeyError:
        raise ValueError(f"model {name!r}: unknown backend {spec.backend!r}; choose one of {sorted(_FACTORIES)}") from None
    return factory(spec, name)


def _load_builtin() -> None:
    # Importing a backend module registers its factories (each imports its SDK lazily).
    import debate_lightning.models.api  # noqa: F401
    import debate_lightning.models.hf_factory  # noqa: F401
    import debate_lightning.models.scripted  # noqa: F401
