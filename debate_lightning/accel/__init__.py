"""The optional CPU engine, behind one door: this module is all the rest of the package imports.

What is in the room (each file says why and how it is exact):

* ``decode.py``: a lean decode loop for Llama-family models (preallocated KV buffers, fused and
  packed weights, grouped-query and cascade attention, inverse-CDF sampling);
* ``native/``: AVX2 C kernels for that loop and for causal attention, compiled once on first use;
* ``packed_linear.py``: frozen fp32 linears through oneDNN with weights packed once;
* ``lower_right_attention.py``: inference-time causal attention after a cache without an explicit mask;
* ``last_position.py``: the last layer at the last position only, for forwards that keep one logit row;
* ``fused_modules.py``: RMSNorm and the SiLU MLP as one native call each in no-grad forwards.

It is ON only for CPU devices, and only where the self-check passes (:func:`reason_off`): the
private APIs it relies on (``torch.ops.mkldnn``'s packed linear, transformers' attention and mask
registries, Llama's layer internals) are probed once, and the whole engine is run on a tiny random
Llama against stock transformers. Anything missing or different turns it off with ONE logged
reason, never an exception. CUDA, MPS and every other device run plain transformers (``generate``,
SDPA), untouched. ``DEBATE_LIGHTNING_ACCEL=0`` turns it off everywhere; a model's option
``accel: false`` turns it off for that model. Finer switches, for measurements:
``DEBATE_LIGHTNING_NATIVE=0`` (torch ops instead of the C kernels) and
``DEBATE_LIGHTNING_PACKED_LINEAR=0``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from debate_lightning.accel import lower_right_attention as _lower_right
from debate_lightning.accel.decode import Decoded, FastDecoder, Sampler
from debate_lightning.accel.fused_modules import fuse_frozen_modules as _fuse
from debate_lightning.accel.last_position import last_position_only as _last_position_only
from debate_lightning.accel.last_position import trim_last_layer as _trim
from debate_lightning.accel.packed_linear import available as packed_linear_available
from debate_lightning.accel.packed_linear import pack_frozen_linears as _pack
from debate_lightning.accel.packed_linear import packed_matmul

__all__ = [
    "Decoded", "FastDecoder", "Sampler", "enabled", "reason_off", "prepare_inference", "prepare_training",
    "last_position_only", "reuses_cached_rows", "decoder_unsupported", "packed_matmul", "packed_linear_available",
]  # fmt: skip

log = logging.getLogger(__name__)
ENV = "DEBATE_LIGHTNING_ACCEL"
_logged: set[str] = set()


def switched_off() -> bool:
    """``DEBATE_LIGHTNING_ACCEL`` is 0/false/no/off (read at every call, so tests can flip it)."""
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def reason_off(device: str | torch.device = "cpu") -> str | None:
    """Why the engine is off for ``device`` (None: it is on)."""
    if switched_off():
        return f"turned off by {ENV}={os.environ.get(ENV)}"
    kind = torch.device(device).type
    if kind != "cpu":
        return f"device {kind!r} runs stock transformers (the engine is CPU-only)"
    from debate_lightning.accel.probe import self_check

    return self_check()


def enabled(device: str | torch.device = "cpu", requested: bool = True) -> bool:
    """Whether a model on ``device`` uses the engine; ``requested`` is the model's ``accel`` option.

    When it is off on a CPU for a reason other than the user's own switch, the reason is logged once.
    """
    if not requested:
        return False
    reason = reason_off(device)
    if reason is not None and torch.device(device).type == "cpu" and reason not in _logged:
        _logged.add(reason)
        (log.info if switched_off() else log.warning)("CPU engine (debate_lightning.accel) off: %s", reason)
    return reason is None


def prepare_inference(model: torch.nn.Module, packed_linear: bool = True, fused_modules: bool = True,
                      lower_right: bool = True) -> None:
    """Set up a frozen model that we loaded for inference (call only where :func:`enabled`):
    packed oneDNN linears, native RMSNorm/MLP, the trimmed last layer, and lower-right attention
    for cached-prefix forwards. State dicts and parameters stay the same."""
    if packed_linear:
        _pack(model)
    if fused_modules:
        _fuse(model)
        _trim(model)
    if lower_right:
        _lower_right.install(model)


def prepare_training(model: torch.nn.Module) -> None:
    """A training policy on a CPU: its frozen fp32 linears (a LoRA policy's base, the reference
    pass) run through packed oneDNN weights; trained weights keep ``F.linear``. No-op where off."""
    device = next(model.parameters()).device
    if enabled(device):
        _pack(model)


@contextlib.contextmanager
def last_position_only(model: torch.nn.Module) -> Iterator[None]:
    """Forwards inside keep only the last position's output (use with ``logits_to_keep=1``); a
    no-op for models :func:`prepare_inference` did not trim."""
    with _last_position_only(model):
        yield


def reuses_cached_rows(model: torch.nn.Module) -> bool:
    """A single unpadded row may run after a cached prefix without an explicit causal mask."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == _lower_right.NAME


def decoder_unsupported(model: torch.nn.Module) -> str | None:
    """Why the lean decode loop cannot run ``model`` (None: it can)."""
    return FastDecoder.unsupported(model)
