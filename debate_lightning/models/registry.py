"""Build a ``Generator`` from a config entry (``ModelSpec``), by backend name.

The table below maps each backend to the factory that builds it, as ``"module:function"``; a
factory's module is imported only when a model of that backend is built, so a scripted test never
imports transformers, and no backend module imports this one back. ``register`` adds a backend at
run time (plugins, tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from debate_lightning.models.base import Generator
from debate_lightning.models.spec import HFOptions, ModelSpec

__all__ = ["BACKENDS", "HFOptions", "ModelSpec", "backends", "build_generator", "register"]

Factory = Callable[[ModelSpec, str], Generator]

BACKENDS: dict[str, str | Factory] = {
    "hf": "debate_lightning.models.hf:build_hf",
    "openai": "debate_lightning.models.api:build_openai",
    "openai_compatible": "debate_lightning.models.api:build_openai_compatible",
    "anthropic": "debate_lightning.models.api:build_anthropic",
    "random": "debate_lightning.models.scripted:build_random",
    "deterministic": "debate_lightning.models.scripted:build_deterministic",
    "replay": "debate_lightning.models.scripted:build_replay",
    "repetitive": "debate_lightning.models.scripted:build_repetitive",
    # Debater-only: a tournament turns these into debate/replay.py's ReplayDebater.
    "human_replay": "debate_lightning.models.scripted:build_speech_replay",
    "offline": "debate_lightning.models.scripted:build_speech_replay",
}


def register(backend: str) -> Callable[[Factory], Factory]:
    """Decorator: ``factory(spec, name) -> Generator`` builds models of ``backend``."""

    def wrap(factory: Factory) -> Factory:
        BACKENDS[backend] = factory
        return factory

    return wrap


def backends() -> list[str]:
    return sorted(BACKENDS)


def build_generator(spec: ModelSpec, name: str = "model") -> Generator:
    try:
        factory = BACKENDS[spec.backend]
    except KeyError:
        raise ValueError(f"model {name!r}: unknown backend {spec.backend!r}; choose one of {backends()}") from None
    if isinstance(factory, str):
        module, function = factory.split(":")
        factory = getattr(importlib.import_module(module), function)
    return factory(spec, name)
