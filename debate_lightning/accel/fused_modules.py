"""Frozen Llama-family RMSNorms and SiLU MLPs on the native kernels in no-grad forwards.

Judging and prefill are full forward passes of hundreds of tokens per row. Besides the linears
(``packed_linear.py``), a Llama layer there spends ~10% of its time in small element-wise torch
ops: RMSNorm as 5-6 ops with temporaries, and the MLP's SiLU and product as two passes over the
widest activation. :func:`fuse_frozen_modules` switches those modules of a model to subclasses
whose forward makes one native call each (``accel/native``: ``rms_norm``, ``silu_mul``):

* only without autograd (``torch.no_grad``/``inference_mode``: judging, prefill, rollouts) and
  for fp32 CPU tensors; anything else runs the original forward, so training is untouched;
* the MLP keeps its own ``gate_proj``/``up_proj``/``down_proj`` modules (packed linears, LoRA
  adapters and all), only ``act(gate) * up`` is one call.

It does nothing where the native kernels do not run (see ``native.disabled_reason``).
"""

from __future__ import annotations

import functools

import torch

from debate_lightning.accel import native

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")  # x * rsqrt(mean(x²) + eps) * w and SiLU-gated MLPs


def _fast(x: torch.Tensor) -> native.StepOps | None:
    if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    return native.step_ops()


class _NativeRMSNorm:
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        ops = _fast(hidden_states)
        if ops is None or self.weight.dtype != torch.float32:
            return super().forward(hidden_states)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        return ops.rms_norm(flat, self.weight, self.variance_epsilon).view(hidden_states.shape)


class _NativeMLP:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = _fast(x)
        if ops is None:
            return super().forward(x)
        gate, up = self.gate_proj(x), self.up_proj(x)
        hidden = ops.silu_mul(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]))
        return self.down_proj(hidden.view(up.shape))


@functools.cache
def _subclass(mixin: type, base: type) -> type:
    return type(f"Native{base.__name__}", (mixin, base), {})


def fuse_frozen_modules(model: torch.nn.Module) -> int:
    """Switch the RMSNorms and SiLU MLPs of a Llama-family ``model`` (see ``ARCHITECTURES``) to
    the native forwards above; returns how many. State dicts and parameters stay the same."""
    config = getattr(model, "config", None)
    if native.library() is None or getattr(config, "model_type", None) not in ARCHITECTURES:
        return 0
    if getattr(config, "hidden_act", "silu") != "silu":
        return 0
    count = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__.startswith("Native"):
            continue
        if cls.__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and module.weight.dim() == 1:
            module.__class__ = _subclass(_NativeRMSNorm, cls)
            count += 1
        elif cls.__name__.endswith("MLP") and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            module.__class__ = _subclass(_NativeMLP, cls)
            count += 1
    return count
