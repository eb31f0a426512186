"""A lean decode loop for Llama-family models: a preallocated KV cache and fused, packed weights.

``transformers``' ``generate`` is built for every model and every feature; on a CPU at batch 16 a
decode step of the embedded model spends more time growing its ``DynamicCache`` (a ``torch.cat``
of every layer's keys and values, every step) than in the matmuls. This loop does what decoding
a Llama needs and nothing else:

* the prompt is prefilled by the model's own ``forward`` (compute-bound, nothing to win there),
  its keys and values are copied once into buffers with room for every new token, and each step
  writes one column in place;
* q/k/v and gate/up projections are fused into one matmul each, every weight packed once: into
  the native small-batch GEMM's strips where the compiled kernels run (``accel/native``, fp32 on
  AVX2 CPUs; ~1.5x oneDNN at 16 rows), else for oneDNN (``accel/packed_linear.py``: ~1.6x the
  default sgemm);
* grouped-query attention reads the shared key/value heads directly, without expanding them
  (natively: each cached key/value row read once per step, the story prefix once per group);
* with the native kernels, RMSNorm, the SiLU gate and the rotary embedding + cache write are one
  call each.

It samples exactly like ``generate`` with the same settings (minimum length, temperature, top-k,
top-p; greedy = argmax), and its logits equal the model's ``forward`` within float tolerance
(tests/accel/test_decode.py). Models it does not know (other architectures, adapters other than
plain LoRA, dynamic RoPE) keep using ``generate``: ``FastDecoder.unsupported(model)`` says why.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from debate_lightning.accel import native as native_kernels
from debate_lightning.accel.packed_linear import packed_matmul

Linear = Callable[[torch.Tensor], torch.Tensor]
# (layer index, queries (B, kv, heads per kv, D), key buffer, value buffer, width) -> (B, kv, heads per kv, D)
_Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight a (possibly LoRA-wrapped) linear layer applies right now, adapters included."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight.detach()
    weight = base.weight.detach()
    if getattr(linear, "disable_adapters", False) or getattr(linear, "merged", False):
        return weight
    for name in linear.active_adapters:
        if name in linear.lora_A:
            weight = weight + linear.get_delta_weight(name).detach().to(weight.dtype)
    return weight


def _bias(linear: torch.nn.Module) -> torch.Tensor | None:
    return getattr(getattr(linear, "base_layer", linear), "bias", None)


def _lora_unsupported(model: torch.nn.Module) -> str | None:
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
                return f"{name} uses DoRA"
            if not isinstance(module.base_layer, torch.nn.Linear):
                return f"{name} adapts a {type(module.base_layer).__name__}"
        elif hasattr(module, "base_layer"):
            return f"{name} is a {type(module).__name__} adapter"
    return None


def _rms_norm(module: torch.nn.Module, ops: native_kernels.StepOps | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's RMSNorm as one op (x / sqrt(mean(x²) + eps) · weight): native, or ``F.rms_norm``."""
    weight = module.weight.detach()
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    if ops is not None:
        weight = weight.contiguous()
        return lambda x: ops.rms_norm(x, weight, eps)
    return lambda x: F.rms_norm(x, weight.shape, weight, eps)


@dataclass
class _Layer:
    norm_in: Callable[[torch.Tensor], torch.Tensor]
    qkv: Linear
    o: Linear
    norm_post: Callable[[torch.Tensor], torch.Tensor]
    gate_up: Linear
    down: Linear


class FastDecoder:
    """Decodes a batch of prefilled Llama-family sequences; build once per set of weights."""

    ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

    @classmethod
    def unsupported(cls, model: torch.nn.Module) -> str | None:
        """Why this model must use ``generate`` instead (None: it can use the lean loop)."""
        base = _base_model(model)
        config = base.config
        if config.model_type not in cls.ARCHITECTURES:
            return f"architecture {config.model_type!r} (lean decoding knows {', '.join(cls.ARCHITECTURES)})"
        if getattr(config, "mlp_bias", False):
            return "MLP bias"
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return "sliding-window attention"
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
            return f"{rope.get('rope_type')} RoPE"
        layer = base.model.layers[0]
        if hasattr(layer.self_attn, "q_norm"):
            return "q/k norms"
        if _bias(base.lm_head) is not None:
            return "an LM-head bias"
        if _bias(layer.self_attn.o_proj) is not None:
            return "an output-projection bias"
        if getattr(config, "hidden_act", "silu") != "silu":
            return f"activation {config.hidden_act!r}"
        return _lora_unsupported(model)

    def __init__(self, model: torch.nn.Module, native: bool = True):
        """``native``: use the compiled CPU kernels (``accel/native``: small-batch linears, decode
        attention, the step's element-wise ops and sampling) where they run (fp32 CPU weights on an
        AVX2 machine with a C compiler); False keeps torch ops everywhere."""
        reason = self.unsupported(model)
        if reason is not None:
            raise ValueError(f"lean decoding does not support this model: {reason}")
        base = _base_model(model)
        config = base.config
        weight = base.lm_head.weight
        self.native = native_kernels.library() if native and weight.device.type == "cpu" and weight.dtype == torch.float32 else None
        matmul = packed_matmul if self.native is None else functools.partial(native_kernels.SmallLinear, self.native)
        self.ops = None if self.native is None else native_kernels.StepOps(self.native)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.embed = base.model.embed_tokens
        self.rotary = base.model.rotary_emb
        self.norm = _rms_norm(base.model.norm, self.ops)
        self.lm_head = matmul(_effective_weight(base.lm_head))
        self.layers = []
        with torch.no_grad():
            for layer in base.model.layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv_bias = None
                if _bias(attn.q_proj) is not None:  # qwen2 keeps biases on q/k/v
                    qkv_bias = torch.cat([_bias(attn.q_proj), _bias(attn.k_proj), _bias(attn.v_proj)])
                qkv_w = torch.cat([_effective_weight(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
                qkv = matmul(qkv_w, qkv_bias)
                self.layers.append(
                    _Layer(
                        norm_in=_rms_norm(layer.input_layernorm, self.ops),
                        qkv=qkv,
                        o=matmul(_effective_weight(attn.o_proj)),
                        norm_post=_rms_norm(layer.post_attention_layernorm, self.ops),
                        gate_up=matmul(torch.cat([_effective_weight(mlp.gate_proj), _effective_weight(mlp.up_proj)])),
                        down=matmul(_effective_weight(mlp.down_proj)),
                    )
                )
        self.intermediate = config.intermediate_size
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.apply_rope = apply_rotary_pos_emb  # the same function Mistral and Qwen2/3 use

    # -- one step -----------------------------------------------------------------------------
    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, keys, values, column: int, attend: _Attend):
        """Logits for one new token per row; writes its keys/values at ``column`` of the buffers."""
        batch = tokens.shape[0]
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = self.embed(tokens)  # (B, H)
        cos, sin = self.rotary(x, positions[:, None])  # (B, 1, D)
        if self.ops is not None:
            cos, sin = cos.reshape(batch, d).contiguous(), sin.reshape(batch, d).contiguous()
        for index, (layer, k_buf, v_buf) in enumerate(zip(self.layers, keys, values)):
            qkv = layer.qkv(layer.norm_in(x))
            if self.ops is not None:  # rotate q and k, write k and v into the buffers: one call
                q = self.ops.rope_store(qkv, cos, sin, k_buf, v_buf, column, h)
            else:
                q = qkv[:, : h * d].view(batch, h, 1, d)
                k = qkv[:, h * d : (h + kv) * d].view(batch, kv, 1, d)
                v = qkv[:, (h + kv) * d :].view(batch, kv, 1, d)
                q, k = self.apply_rope(q, k, cos, sin)
                k_buf[:, :, column : column + 1] = k
                v_buf[:, :, column : column + 1] = v
            # Grouped-query attention without expanding the key/value heads: the query heads of
            # one kv head (HF's repeat_kv maps head i to kv head i // groups) form its rows.
            attn = attend(index, q.view(batch, kv, h // kv, d), k_buf, v_buf, column + 1)
            x = x + layer.o(attn.reshape(batch, h * d))
            gate_up = layer.gate_up(layer.norm_post(x))
            if self.ops is not None:
                x = x + layer.down(self.ops.silu_mul(gate_up))
            else:
                gate, up = gate_up.split(self.intermediate, dim=-1)
                x = x + layer.down(F.silu(gate) * up)
        return self.lm_head(self.norm(x)).float()

    def _attention(self, layout: _Layout, shared_kv, total: int, dtype: torch.dtype) -> _Attend:
        """Attention for every step of one decode: the native kernel where it runs (CPU, fp32,
        rows left-padded), else torch ops (with cascade merging when rows share prefixes)."""
        batch, g, d = layout.mask.shape[0], self.num_heads // self.num_kv_heads, self.head_dim
        start = layout.starts()
        lib = self.native if layout.mask.device.type == "cpu" and dtype == torch.float32 else None
        if lib is not None and start is not None and native_kernels.DecodeAttention.supports(d, g):
            group, lengths = layout.row_groups()
            return native_kernels.DecodeAttention(lib, batch, self.num_kv_heads, g, d, start, total, shared_kv, group, lengths)
        bias = torch.zeros(batch, total, dtype=dtype, device=layout.mask.device)
        bias[:, : layout.width].masked_fill_(layout.mask == 0, torch.finfo(dtype).min)
        scale = 1.0 / math.sqrt(d)

        def attend(index: int, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, width: int) -> torch.Tensor:
            scores = torch.matmul(q, k_buf[:, :, :width].transpose(-1, -2)).mul_(scale).add_(bias[:, None, None, :width])
            if shared_kv[index] is None:
                return torch.matmul(torch.softmax(scores, dim=-1), v_buf[:, :, :width])
            return _cascade(q, scores, v_buf[:, :, :width], shared_kv[index], layout, scale)

        return attend

    # -- the loop ------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        prompt_keys: Sequence[torch.Tensor],
        prompt_values: Sequence[torch.Tensor],
        mask: torch.Tensor,
        first_logits: torch.Tensor,
        max_new_tokens: int,
        sampler: Sampler,
        eos_ids: Sequence[int],
        pad_id: int,
        want_scores: bool = False,
        shared: Sequence[tuple[Sequence[int], int]] | None = None,
    ) -> Decoded:
        """New tokens (B, n) after prefilled, left-padded prompts; with ``want_scores`` also the
        processed logits of every step (B, n, V), as ``generate(output_scores=True)`` returns them.

        ``prompt_keys[l]``/``prompt_values[l]`` are layer l's (B, kv_heads, W, D) prompt cache,
        ``mask`` the (B, W) prompt mask, ``first_logits`` the (B, V) logits after the prompt.
        Finished rows continue with ``pad_id`` (ignored) until every row is done.

        ``shared`` lists groups of rows whose first n real prompt tokens are the same (a story's
        system message): ``[(rows, n), ...]``. Each group's prefix keys/values are then kept once
        and read once per step for all its rows (cascade attention: the softmaxes over the shared
        and the per-row part are merged by their log-sum-exp) instead of once per row.
        """
        batch = mask.shape[0]
        groups = _worth_sharing(shared, batch)
        if groups is None:
            layout = _Layout.plain(mask)
        else:
            layout = _Layout.cascade(mask, groups, prompt_keys[0].dtype)
            mask, first_logits = mask[layout.order], first_logits[layout.order]
        width = layout.width
        total = width + max_new_tokens
        keys, values, shared_kv = [], [], []
        for k, v in zip(prompt_keys, prompt_values):
            k_buf = k.new_empty(batch, k.shape[1], total, k.shape[3])
            v_buf = v.new_empty(batch, v.shape[1], total, v.shape[3])
            layout.gather(k, k_buf[:, :, :width])
            layout.gather(v, v_buf[:, :, :width])
            keys.append(k_buf)
            values.append(v_buf)
            shared_kv.append(layout.shared(k, v))
        attend = self._attention(layout, shared_kv, total, keys[0].dtype)
        positions = mask.sum(-1)
        eos = torch.tensor(list(eos_ids), device=mask.device)
        done = torch.zeros(batch, dtype=torch.bool, device=mask.device)
        out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=mask.device)
        scores = [] if want_scores else None
        logits = first_logits.float()
        n = 0
        # Plain temperature sampling without per-step scores: one native call instead of ~10 ms of
        # torch ops a step at batch 16 (processing, softmax, a float64 CDF, searchsorted).
        native_draw = self.ops is not None and scores is None and sampler.plain and logits.device.type == "cpu"
        for step in range(max_new_tokens):
            if native_draw:
                token = self.ops.sample(logits, sampler.temperature, eos if step < sampler.min_new_tokens else None)
            else:
                processed = sampler.process(logits, step, eos)
                token = sampler.choose(processed)
                if scores is not None:
                    scores.append(processed)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            out[:, step] = token
            n = step + 1
            done |= torch.isin(token, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = self._step(token, positions, keys, values, width + step, attend)
            positions = positions + 1
        stacked = None
        if scores is not None:
            stacked = torch.stack(scores, dim=1) if scores else logits.new_zeros(batch, 0, logits.shape[-1])
        unsort = layout.unsort
        return Decoded(out[:, :n][unsort], None if stacked is None else stacked[unsort], keys, values, shared_kv, layout)


def _cascade(qg: torch.Tensor, scores: torch.Tensor, values: torch.Tensor, shared, layout: _Layout, scale: float) -> torch.Tensor:
    """Attention over each row's own keys (``scores`` against ``values``) and its group's shared
    prefix, merged exactly: the softmax over both = each part's sums rescaled to one maximum.
    All groups at once: (G, kv, rows x heads, S) scores against their (G, kv, S, D) keys."""
    top = scores.amax(-1, keepdim=True)
    weights = (scores - top).exp_()
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights, values)
    k_s, v_s = shared
    groups, n = k_s.shape[0], layout.group_rows
    _, kv, heads, d = qg.shape
    q = qg if layout.slots is None else qg[layout.slots]  # (G * n, kv, heads, D), groups padded to n rows
    q = q.view(groups, n, kv, heads, d).transpose(1, 2).reshape(groups, kv, n * heads, d)
    s_s = torch.matmul(q, k_s.transpose(-1, -2)).mul_(scale).add_(layout.shared_bias)
    top_s = s_s.amax(-1, keepdim=True)
    w_s = (s_s - top_s).exp_()

    def rows(t: torch.Tensor) -> torch.Tensor:  # (G, kv, n * heads, X) -> (B, kv, heads, X)
        t = t.view(groups, kv, n, heads, t.shape[-1]).transpose(1, 2).reshape(groups * n, kv, heads, t.shape[-1])
        return t if layout.filled is None else t[layout.filled]

    total_s, out_s, top_s = rows(w_s.sum(-1, keepdim=True)), rows(torch.matmul(w_s, v_s)), rows(top_s)
    m = torch.maximum(top, top_s)
    a, b = (top - m).exp_(), (top_s - m).exp_()
    return (out * a + out_s * b).div_(total * a + total_s * b)


def _worth_sharing(shared, batch: int) -> list[tuple[list[int], int]] | None:
    """The groups to share, or None: only when rows share prefixes two to a group on average."""
    if not shared:
        return None
    groups = [(list(rows), n) for rows, n in shared if rows]
    if sorted(r for rows, _ in groups for r in rows) != list(range(batch)):
        raise ValueError("shared prefix groups must cover every row exactly once")
    if any(n <= 0 for _, n in groups) or batch < 2 * len(groups):
        return None
    return groups


@dataclass
class _Layout:
    """Where each row's prompt keys/values sit in the decode buffers.

    Plain: as prefilled, (B, kv, W, D) with left padding. Cascade: rows reordered so each group
    is contiguous (buffer row i holds input row ``order[i]``); a row's own columns (its real
    prompt tokens after the shared n) are left-padded into ``width``; each group's n shared
    columns are kept once (``spans``: start, end, source row, its prefill columns).
    """

    mask: torch.Tensor  # (B, width) prompt mask in buffer layout and row order
    width: int
    order: torch.Tensor | None = None
    columns: list[torch.Tensor] | None = None  # cascade: per buffer row, the prefill columns of its own tokens
    spans: list[tuple[int, int, int, torch.Tensor]] | None = None
    # Cascade attention runs every group at once, each padded to ``group_rows`` rows: slot j of
    # group g is buffer row ``slots[g * group_rows + j]`` (a repeat where the group is short);
    # ``filled`` picks the real slots in buffer-row order (both None when no group is short).
    # ``shared_bias`` (G, 1, 1, S) masks the columns past a group's own shared length.
    group_rows: int = 0
    slots: torch.Tensor | None = None
    filled: torch.Tensor | None = None
    shared_bias: torch.Tensor | None = None

    @classmethod
    def plain(cls, mask: torch.Tensor) -> _Layout:
        return cls(mask, mask.shape[1])

    @classmethod
    def cascade(cls, mask: torch.Tensor, groups: list[tuple[list[int], int]], dtype: torch.dtype) -> _Layout:
        order = [r for rows, _ in groups for r in rows]
        real = [mask[r].nonzero().squeeze(1) for r in order]
        spans, own, start = [], [], 0
        for rows, n in groups:
            spans.append((start, start + len(rows), rows[0], real[start][:n]))
            own += [real[i][n:] for i in range(start, start + len(rows))]
            start += len(rows)
        width = max(len(c) for c in own)
        buffer_mask = torch.zeros(len(order), width, dtype=mask.dtype, device=mask.device)
        for i, c in enumerate(own):
            buffer_mask[i, width - len(c) :] = 1
        layout = cls(buffer_mask, width, torch.tensor(order, device=mask.device), own, spans)
        longest = max(len(c) for *_, c in spans)
        layout.shared_bias = torch.zeros(len(spans), 1, 1, longest, dtype=dtype, device=mask.device)
        for g, (*_, c) in enumerate(spans):
            layout.shared_bias[g, ..., len(c) :] = torch.finfo(dtype).min
        n = layout.group_rows = max(end - start for start, end, _, _ in spans)
        if any(end - start < n for start, end, _, _ in spans):
            slots = [min(start + j, end - 1) for start, end, _, _ in spans for j in range(n)]
            filled = [g * n + j for g, (start, end, _, _) in enumerate(spans) for j in range(end - start)]
            layout.slots = torch.tensor(slots, device=mask.device)
            layout.filled = torch.tensor(filled, device=mask.device)
        return layout

    @property
    def unsort(self) -> torch.Tensor | slice:
        return slice(None) if self.order is None else torch.argsort(self.order)

    def gather(self, kv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The prefilled (B, kv, W, D) keys or values in buffer layout (zeros where padded),
        written into ``out``."""
        if self.order is None:
            return out.copy_(kv)
        for i, (row, c) in enumerate(zip(self.order.tolist(), self.columns)):
            out[i, :, : self.width - len(c)] = 0
            out[i, :, self.width - len(c) :] = kv[row, :, c]
        return out

    def shared(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every group's shared prefix keys and values, once: (G, kv, S, D), right-padded to the
        longest (``shared_bias`` masks the padding)."""
        if self.spans is None:
            return None
        longest = self.shared_bias.shape[-1]
        k_s = k.new_zeros(len(self.spans), k.shape[1], longest, k.shape[3])
        v_s = v.new_zeros(len(self.spans), v.shape[1], longest, v.shape[3])
        for g, (_, _, row, c) in enumerate(self.spans):
            k_s[g, :, : len(c)] = k[row, :, c]
            v_s[g, :, : len(c)] = v[row, :, c]
        return k_s, v_s

    def starts(self) -> torch.Tensor | None:
        """Each buffer row's first real column, if every row is left-padded (real columns
        contiguous to the end); None otherwise."""
        start = self.width - self.mask.sum(-1)
        columns = torch.arange(self.width, device=self.mask.device)
        return start if torch.equal(self.mask != 0, columns >= start[:, None]) else None

    def row_groups(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each buffer row's group (index into ``spans``) and each group's shared length."""
        if self.spans is None:
            return None, None
        group = torch.empty(self.mask.shape[0], dtype=torch.int64)
        for g, (start, end, _, _) in enumerate(self.spans):
            group[start:end] = g
        return group, torch.tensor([len(c) for *_, c in self.spans], dtype=torch.int64)

    def buffer_row(self, row: int) -> int:
        return row if self.order is None else int((self.order == row).nonzero()[0])

    def group_of(self, i: int) -> int | None:
        """The group (index into ``spans``) of buffer row i, if rows share prefixes."""
        return next((g for g, (start, end, _, _) in enumerate(self.spans or []) if start <= i < end), None)


@dataclass
class Decoded:
    """What ``FastDecoder.decode`` returns: new tokens (B, n) and the processed logits (B, n, V)
    if asked for, in the input's row order, and the key/value buffers behind ``row_cache``."""

    tokens: torch.Tensor
    scores: torch.Tensor | None
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    shared_kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    layout: _Layout

    def row_cache(self, row: int, new: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (1, kv, L, D) keys/values of input row ``row``'s real prompt tokens and its
        first ``new`` new tokens (at most n-1: the last token sampled was never fed back)."""
        layout = self.layout
        i = layout.buffer_row(row)
        width = layout.width
        real = layout.mask[i].nonzero().squeeze(1)
        if real.numel() and int(real[0]) + real.numel() == width:  # left-padded: one slice, no gather
            columns: slice | torch.Tensor = slice(int(real[0]), width + new)
        else:
            columns = torch.cat([real, torch.arange(width, width + new, device=layout.mask.device)])
        group = layout.group_of(i)
        n = len(layout.spans[group][3]) if group is not None else 0
        out = []
        for layer, buffers in enumerate(zip(self.keys, self.values)):
            pair = []
            for j, buffer in enumerate(buffers):
                own = buffer[i, :, columns]
                kv = buffer.new_empty(1, buffer.shape[1], n + own.shape[1], buffer.shape[3])  # one copy per row
                if n:
                    kv[0, :, :n] = self.shared_kv[layer][j][group, :, :n]
                kv[0, :, n:] = own
                pair.append(kv)
            out.append((pair[0], pair[1]))
        return out


@dataclass
class Sampler:
    """``generate``'s logits processing and sampling, in its order: minimum length (EOS masked),
    temperature, top-k, top-p, then a multinomial draw (or argmax when greedy)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    greedy: bool = False

    @property
    def plain(self) -> bool:
        """Sampling at a temperature with no top-k/top-p truncation."""
        return not self.greedy and self.temperature > 0 and not self.top_k and self.top_p >= 1.0

    def process(self, logits: torch.Tensor, step: int, eos: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if step < self.min_new_tokens:
            logits[:, eos] = -math.inf
        if self.greedy:
            return logits
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if self.top_p < 1.0:
            # As transformers' TopPLogitsWarper: drop the low tail whose total mass is <= 1 - top_p,
            # always keeping the most likely token.
            sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            remove = cumulative <= (1 - self.top_p)
            remove[:, -1] = False
            logits = logits.masked_fill(remove.scatter(1, order, remove), -math.inf)
        return logits

    def choose(self, processed: torch.Tensor) -> torch.Tensor:
        """One token per row, drawn from softmax(processed) by the inverse CDF: one uniform number
        per row. (``torch.multinomial`` draws as if from a whole row of random numbers on the CPU:
        ~25 ms a step at batch 16 over a 49k vocabulary, against ~2 ms here.) A token of zero
        probability adds nothing to the CDF, so the first entry above ``u`` is never one."""
        if self.greedy:
            return processed.argmax(-1)
        cdf = processed.softmax(-1).cumsum(-1, dtype=torch.float64)
        u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
