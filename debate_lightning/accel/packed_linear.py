"""Frozen fp32 linear layers through oneDNN with their weights packed once (CPU only).

PyTorch's default fp32 GEMM on CPU is MKL's. On the AVX2 AMD EPYC this project is measured on it
runs prefill- and training-sized products (thousands of rows) at 92-100 GFLOP/s and 16-row decode
products at ~30; oneDNN with the weight reordered ONCE into its blocked layout runs the same
products at 135-146 and ~48 GFLOP/s (``benchmarks/linear.py`` prints both). A frozen weight never
changes, so packing it once is free speed for generation, judging, reference forwards, and the
frozen base of a LoRA policy, whose backward only needs ``grad @ W`` (a second packed copy).

:func:`pack_frozen_linears` switches every plain ``nn.Linear`` of a model to :class:`PackedLinear`.
Its forward uses the packed weight only when that is exactly equivalent:

* the weight and bias are fp32 CPU tensors (not sharded), and none of them is being trained right
  now (a weight that needs a gradient uses ``F.linear``, so full fine-tuning is untouched);
* the packed copy is current: it is rebuilt whenever the weight changes in place or is replaced
  (``load_state_dict``, merged adapters, an optimizer step of a full fine-tune before a rollout).

Set ``DEBATE_LIGHTNING_PACKED_LINEAR=0`` to turn it off everywhere.
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """oneDNN's packed fp32 linear exists here and agrees with ``F.linear``."""
    if os.environ.get("DEBATE_LIGHTNING_PACKED_LINEAR", "1") in ("0", "false", "no", "off"):
        return False
    if not torch.backends.mkldnn.is_available():
        log.info("packed linears off: this torch has no oneDNN (mkldnn)")
        return False
    generator = torch.Generator().manual_seed(0)  # the probe must not move the global RNG
    weight, x = torch.randn(48, 40, generator=generator), torch.randn(5, 40, generator=generator)
    try:  # private ops: a torch release may rename or drop them
        got = _run(x, _pack(weight), None)
    except (RuntimeError, AttributeError) as err:
        log.warning("packed linears off: torch.ops.mkldnn's packed linear is missing or changed (%s)", err)
        return False
    if not torch.allclose(got, F.linear(x, weight), rtol=1e-4, atol=1e-4):
        log.warning("packed linears off: torch.ops.mkldnn's packed linear disagrees with F.linear")
        return False
    return True


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) reordered once into oneDNN's blocked layout."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def _run(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packable(t: torch.Tensor | None) -> bool:
    return t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and type(t.data) is torch.Tensor)


def packed_matmul(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x @ weight.T + bias`` with ``weight`` packed now (for weights that never change), or F.linear."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if available() and _packable(weight) and _packable(bias):
        packed = _pack(weight)
        return lambda x: _run(x, packed, bias)
    return lambda x: F.linear(x, weight, bias)


# module -> (weight key, packed W, packed W^T or None); outside the module so copies never carry it
_PACKED: weakref.WeakKeyDictionary[torch.nn.Module, list] = weakref.WeakKeyDictionary()


def _key(t: torch.Tensor) -> tuple[int, int]:
    return (t.data_ptr(), t._version)


class _FrozenLinearFunction(torch.autograd.Function):
    """y = x W^T + b with W, b frozen: the backward gives only dL/dx = dL/dy W (packed W^T)."""

    @staticmethod
    def forward(ctx, x, weight, bias, module):  # noqa: ARG004 - weight/bias listed for autograd's sake
        ctx.module = module
        return _run(x, module._packed(transpose=False), bias)

    @staticmethod
    def backward(ctx, grad):
        grad_x = _run(grad.contiguous(), ctx.module._packed(transpose=True), None) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose frozen fp32 weight is multiplied by oneDNN in a packed layout."""

    def _packed(self, transpose: bool) -> torch.Tensor:
        entry = _PACKED.get(self)
        key = _key(self.weight)
        if entry is None or entry[0] != key:
            entry = [key, _pack(self.weight), None]
            _PACKED[self] = entry
        if transpose and entry[2] is None:
            entry[2] = _pack(self.weight.t())
        return entry[2] if transpose else entry[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled()
        trained = grad and (self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad))
        if trained or not (_packable(self.weight) and _packable(self.bias) and _packable(x)):
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        if grad and x.requires_grad:
            return _FrozenLinearFunction.apply(x, self.weight, bias, self)
        return _run(x, self._packed(transpose=False), bias)


def pack_frozen_linears(model: torch.nn.Module) -> int:
    """Switch every plain ``nn.Linear`` in ``model`` to :class:`PackedLinear`; returns how many.

    Weights are not touched or copied until a forward needs them; state dicts stay the same.
    Does nothing where oneDNN is missing or turned off.
    """
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = PackedLinear
            count += 1
    return count
