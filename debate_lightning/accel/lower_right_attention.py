"""SDPA with fast paths for inference-time causal attention on CPU: lower-right after a KV cache,
with padding, without the explicit mask.

A forward over the last L of S tokens, the first S - L served from a cache (a judge prompt after
the shared start of another, a turn after the speaker's last one, a prefill after a story's KV),
needs *lower-right* causal attention: query i sees keys up to S - L + i. PyTorch's SDPA
``is_causal`` is upper-left, so transformers builds an explicit (B, 1, L, S) mask there (and for
any padded batch), and a masked SDPA computes every query against every key. Even unmasked, its
CPU flash kernel computes almost the whole square at 500-700 tokens (64-query by 512-key blocks).

Under ``attn_implementation="sdpa_lower_right"`` (:func:`install`), the mask function hands
inference-time causal calls on CPU (no autograd, the queries the last positions of the keys) a
:class:`LowerRight` marker holding just the (B, S) key-padding mask instead, and the attention
function runs:

* the native causal kernel (``native/causal_attention.c``) where it builds: every (query, head)
  tile only up to its own last key, padding skipped by the key mask, grouped-query heads reading
  their kv head directly (~1.6-1.8x torch's flash kernel at judge sizes);
* otherwise, for one unpadded row after a cache, two flash-attention calls, the cached part (no
  mask) and the new square block (upper-left causal *is* lower-right there), merged exactly by
  their log-sum-exps: ``out = o_cached * exp(lse_cached - lse) + o_new * exp(lse_new - lse)``;
* otherwise the explicit mask transformers would have built, through its own SDPA path.

Every other call (autograd, GPUs, sliding windows, offsets) is transformers' own path, unchanged.
"""

from __future__ import annotations

import torch

from debate_lightning.accel import native

NAME = "sdpa_lower_right"


class LowerRight:
    """What the mask function hands the attention function: lower-right causal attention (the L
    queries are the last L of the S keys), and ``keys``, (B, S) bool of the keys a row may see
    (its padding hidden), or None when every key is real."""

    __slots__ = ("keys",)

    def __init__(self, keys: torch.Tensor | None = None):
        self.keys = keys

    def explicit(self, length: int, total: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The boolean (B or 1, 1, L, S) mask transformers would have built."""
        mask = torch.ones(length, total, dtype=torch.bool, device=device).tril(total - length)[None, None]
        return mask if self.keys is None else mask & self.keys[:, None, None, :].to(device)

    def last_row(self) -> torch.Tensor | None:
        """The mask of the last query, which sees every real key: (B, 1, 1, S), or None."""
        return None if self.keys is None else self.keys[:, None, None, :]


def _native() -> bool:
    return native.library() is not None


def _mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
          allow_is_causal_skip=True, device="cpu", **kwargs):
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    if (
        allow_is_causal_skip
        and isinstance(q_offset, int) and isinstance(kv_offset, int) and isinstance(q_length, int)
        and 1 <= q_length <= kv_length and kv_offset == 0 and q_offset + q_length == kv_length
        and mask_function is causal_mask_function
        and kwargs.get("local_size") is None
        and torch.device(device).type == "cpu"
        and not torch.is_grad_enabled()
        and (attention_mask is None or tuple(attention_mask.shape) == (batch_size, kv_length))
    ):
        keys = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        if _native():
            return LowerRight(keys)
        if batch_size == 1 and keys is None and 1 < q_length < kv_length:  # the two-call flash split
            return LowerRight()
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, device=device, **kwargs)


def lower_right_causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """(1, H, L, d) attention of the last L of S positions, each seeing keys up to its own:
    ``key``/``value`` (1, H, S, d) with as many heads as ``query``. CPU only."""
    cached = key.shape[2] - query.shape[2]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    o_new, lse_new = flash(query, key[:, :, cached:], value[:, :, cached:], 0.0, True, scale=scale)
    o_old, lse_old = flash(query, key[:, :, :cached], value[:, :, :cached], 0.0, False, scale=scale)
    lse = torch.logaddexp(lse_old, lse_new)
    return o_old * (lse_old - lse).exp_().unsqueeze(-1) + o_new * (lse_new - lse).exp_().unsqueeze(-1)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if isinstance(attention_mask, LowerRight):
        plain = dropout == 0.0 and query.device.type == "cpu" and not kwargs.get("output_attentions")
        if plain and _native() and native.causal_attention_supports(query, key):
            return native.causal_attention(query, key, value, attention_mask.keys, scaling), None
        length, total = query.shape[2], key.shape[2]
        if plain and attention_mask.keys is None and query.shape[0] == 1 and 1 < length < total:
            groups = getattr(module, "num_key_value_groups", 1)
            out = lower_right_causal(query, repeat_kv(key, groups), repeat_kv(value, groups), scaling)
            return out.transpose(1, 2).contiguous(), None
        # Anything the fast paths do not cover gets the explicit mask transformers would have built.
        attention_mask = attention_mask.explicit(length, total, query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def available() -> bool:
    """This torch has the CPU flash-attention op that returns the log-sum-exp."""
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def install(model: torch.nn.Module) -> bool:
    """Switch ``model`` from transformers' ``sdpa`` attention to ``sdpa_lower_right``; returns
    whether it did (models on another attention implementation keep theirs)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not (available() or _native()):
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
