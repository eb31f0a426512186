"""The engine's self-check: run once per process, before any model uses it.

The engine leans on private or fast-moving APIs: ``torch.ops.mkldnn``'s packed linear (probed in
``packed_linear.available``), transformers' attention and mask registries, and the internals of
its Llama layers (rotary embedding, ``repeat_kv``, the decoder layer's forward arguments). A new
release may rename or change any of them. So instead of trusting version numbers, the check builds
a tiny random Llama (2 layers, 64 wide) twice, prepares one copy as a loaded model would be, and
compares it with the stock copy:

* a padded batch's last-position logits, and a forward after a cached prefix (packed linears,
  fused modules, the trimmed last layer, lower-right attention and the native causal kernel);
* greedy decoding by the lean loop against transformers' ``generate`` (tokens equal).

Any import error, exception or difference beyond float tolerance is the reason the engine stays
off; it is never raised. It costs well under a second (plus the kernels' one-time build).
"""

from __future__ import annotations

import functools

import torch

TOLERANCE = 1e-3  # fp32 logits of a 2-layer model; reordered sums differ by ~1e-6


@functools.cache
def self_check() -> str | None:
    """None when the engine agrees with stock transformers here, else why it does not."""
    try:
        return _check()
    except Exception as err:  # noqa: BLE001 - any failure means: stay off, say why
        return f"self-check failed: {type(err).__name__}: {err}"


def _imports() -> str | None:
    try:
        from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM  # noqa: F401
        from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask  # noqa: F401
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb  # noqa: F401
    except ImportError as err:
        return f"transformers lacks what the engine hooks into ({err})"
    return None


def _cache_name() -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); the one this release has."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _tiny_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):  # the check must not move the caller's RNG
        torch.manual_seed(0)
        stock = LlamaForCausalLM(config).eval().requires_grad_(False)
        twin = LlamaForCausalLM(LlamaConfig(**config.to_dict())).eval().requires_grad_(False)
    twin.load_state_dict(stock.state_dict())
    return stock, twin


def _check() -> str | None:
    from debate_lightning.accel import decode, prepare_inference
    from debate_lightning.accel.last_position import last_position_only

    missing = _imports()
    if missing:
        return missing
    stock, fast = _tiny_pair()
    prepare_inference(fast)
    ids = torch.tensor([[0, 0, 5, 9, 17, 33, 41, 7], [3, 11, 19, 23, 29, 31, 37, 43]])
    mask = (ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        want = stock(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        with last_position_only(fast):
            got = fast(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        if (got - want).abs().max() > TOLERANCE:
            return f"padded forward differs from stock transformers by {float((got - want).abs().max()):.2e}"
        # one row after a cached prefix: the lower-right path
        row = ids[1:]
        name = _cache_name()
        cache = getattr(fast(input_ids=row[:, :5], use_cache=True), name)
        after = fast(input_ids=row[:, 5:], use_cache=True, **{name: cache}).logits[:, -1]
        whole = stock(input_ids=row).logits[:, -1]
        if (after - whole).abs().max() > TOLERANCE:
            return f"cached-prefix forward differs from stock transformers by {float((after - whole).abs().max()):.2e}"
        if decode.FastDecoder.unsupported(fast) is None:
            reason = _check_decoding(stock, fast, ids, mask)
            if reason:
                return reason
    return None


def _check_decoding(stock, fast, ids, mask) -> str | None:
    from debate_lightning.accel.decode import FastDecoder, Sampler

    steps = 6
    want = stock.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                          do_sample=False, pad_token_id=0, eos_token_id=2)[:, ids.shape[1]:]
    out = fast(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
               logits_to_keep=1)
    layers = getattr(out, _cache_name()).layers
    decoded = FastDecoder(fast).decode([layer.keys for layer in layers], [layer.values for layer in layers], mask,
                                       out.logits[:, -1], steps, Sampler(greedy=True, min_new_tokens=steps), [2], 0,
                                       False)
    if not torch.equal(decoded.tokens, want):
        return "the lean decode loop's greedy tokens differ from transformers' generate"
    return None
