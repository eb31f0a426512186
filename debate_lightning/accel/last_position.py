"""Forwards that only need the last position's logits skip most of the last layer.

Judging (P(A) after the decision prompt), prefill before decoding and a story's prefix KV keep the
logits of the last position only (``logits_to_keep=1``), but the model still runs every layer at
every position. The layers before the last must (their outputs are the last layer's keys and
values), the last one need not: it needs keys and values of every position (the cache, and the
last query's attention) but the query, attention output, o-projection and MLP of the last position
only. That is ~94% of the last layer: ~3% of a 30-layer forward, at no cost in exactness.

:func:`trim_last_layer` switches a Llama model's last decoder layer to a subclass that does this
inside :func:`last_position_only`, without autograd, when the mask is SDPA-style (None, a boolean
or additive (B, 1, L, S) mask, or the lower-right marker with its key mask); everywhere else it runs the stock forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from debate_lightning.accel import lower_right_attention

ARCHITECTURES = ("llama",)  # stock Llama decoder layers: rotary q/k, GQA, RMSNorm, gated MLP


class _LastPositionLayer:
    _last_only = False

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if not self._trimmable(hidden_states, attention_mask, position_embeddings, kwargs):
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                   use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        from transformers.models.llama.modeling_llama import repeat_kv

        attn = self.self_attn
        batch, length, _ = hidden_states.shape
        normed = self.input_layernorm(hidden_states)
        keys = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        values = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
        query = attn.q_proj(normed[:, -1:]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, keys = _rotate(query, cos[:, -1:], sin[:, -1:]), _rotate(keys, cos, sin)
        if cache is not None:
            keys, values = cache.update(keys, values, attn.layer_idx)
        # The last query sees every real key: its row of the mask (none when the mask is causal only).
        if isinstance(attention_mask, lower_right_attention.LowerRight):
            mask = attention_mask.last_row()
        else:
            mask = attention_mask[:, :, -1:, :] if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 else None
        groups = attn.num_key_value_groups
        out = F.scaled_dot_product_attention(query, repeat_kv(keys, groups), repeat_kv(values, groups), attn_mask=mask,
                                             scale=attn.scaling)
        hidden = hidden_states[:, -1:] + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def _trimmable(self, hidden_states, attention_mask, position_embeddings, kwargs) -> bool:
        if not self._last_only or torch.is_grad_enabled() or hidden_states.shape[1] < 2 or position_embeddings is None:
            return False
        if kwargs.get("output_attentions") or self.self_attn.training:
            return False
        if attention_mask is None or isinstance(attention_mask, lower_right_attention.LowerRight):
            return True
        return isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.shape[2] == hidden_states.shape[1]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, heads, L, d) ``x`` at (B, L, d) ``cos``/``sin``, halves rotated
    (the Llama convention: x cos + [-x2, x1] sin)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@functools.cache
def _subclass(base: type) -> type:
    return type(f"LastPosition{base.__name__}", (_LastPositionLayer, base), {})


def _last_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers[-1] if layers is not None and len(layers) else None


def trim_last_layer(model: torch.nn.Module) -> bool:
    """Let ``model``'s last decoder layer skip what only the other positions need inside
    :func:`last_position_only`; returns whether it can (stock Llama models)."""
    config = getattr(model, "config", None)
    layer = _last_layer(model)
    if getattr(config, "model_type", None) not in ARCHITECTURES or layer is None:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", lower_right_attention.NAME):
        return False
    cls = type(layer)
    if not isinstance(layer, _LastPositionLayer):
        if cls.__name__ != "LlamaDecoderLayer":
            return False
        layer.__class__ = _subclass(cls)
    return True


@contextlib.contextmanager
def last_position_only(model: torch.nn.Module) -> Iterator[None]:
    """Within: forwards of ``model`` produce the last layer's output at the last position only
    (every layer's keys and values still cover all positions). Use with ``logits_to_keep=1``."""
    layer = _last_layer(model)
    if not isinstance(layer, _LastPositionLayer):
        yield
        return
    layer._last_only = True
    try:
        yield
    finally:
        layer._last_only = False
