"""SDPA with a fast path for one unpadded row whose first tokens come from a KV cache.

A forward over the last L of S tokens, the first S - L served from a cache (a judge prompt after
the shared start of another, a turn after the speaker's last one), needs *lower-right* causal
attention: query i sees keys up to S - L + i. PyTorch's SDPA ``is_causal`` is upper-left, so
transformers builds an explicit (1, 1, L, S) mask there, and a masked SDPA can neither skip the
masked half nor use its fastest kernel: at ~600 tokens that costs more than the cache saves.

Here, under ``attn_implementation="sdpa_lower_right"`` (:func:`install`), that case (one row,
no padding, no autograd, CPU) is split instead into the cached part, where every query sees every
key (no mask), and the new square block, where upper-left causal *is* lower-right. Each is one
flash-attention call that also returns the log-sum-exp of its scores, and the two merge exactly:
``out = o_cached * exp(lse_cached - lse) + o_new * exp(lse_new - lse)``, ``lse = logaddexp(...)``.
Every other call is transformers' own SDPA path, unchanged.
"""

from __future__ import annotations

import torch

NAME = "sdpa_lower_right"

# What the mask function hands the attention function for the fast path: one unpadded row after a
# cache. A distinct object (not None: a mask of None means "upper-left causal" to SDPA).
LOWER_RIGHT = torch.ones(0, dtype=torch.bool)


def _mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
          allow_is_causal_skip=True, device="cpu", **kwargs):
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    if (
        batch_size == 1
        and allow_is_causal_skip
        and isinstance(q_offset, int) and isinstance(kv_offset, int) and isinstance(q_length, int)
        and 1 < q_length < kv_length and kv_offset == 0 and q_offset + q_length == kv_length
        and mask_function is causal_mask_function
        and kwargs.get("local_size") is None
        and torch.device(device).type == "cpu"
        and not torch.is_grad_enabled()
        and (attention_mask is None or bool(attention_mask.all()))
    ):
        return LOWER_RIGHT
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

    if attention_mask is LOWER_RIGHT:
        if dropout == 0.0 and query.device.type == "cpu" and not kwargs.get("output_attentions"):
            groups = getattr(module, "num_key_value_groups", 1)
            out = lower_right_causal(query, repeat_kv(key, groups), repeat_kv(value, groups), scaling)
            return out.transpose(1, 2).contiguous(), None
        # Anything the split does not cover gets the explicit mask transformers would have built.
        length, total = query.shape[2], key.shape[2]
        attention_mask = torch.ones(length, total, dtype=torch.bool, device=query.device).tril(total - length)[None, None]
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
    if getattr(config, "_attn_implementation", None) != "sdpa" or not available():
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
