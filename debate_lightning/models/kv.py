"""KV reuse for local models: the prefix cache, padded batches after cached prefixes, prefills.

Nothing here is device-specific: the prefix cache serves ``generate`` on a GPU as it serves the
CPU engine's decode loop. Rows are left-padded; position ids come from the attention mask, so
every real token keeps the position it has in its unpadded prompt and cached and uncached runs
give the same outputs (tests/models/test_hf.py).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (B, kv heads, T, D)


@functools.cache
def cache_kwarg() -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever this one has."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each real token keeps its position in the unpadded row."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def cache_of(kv: KV):
    """A transformers cache holding per-layer (keys, values)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k, v, layer)
    return cache


def kv_of(output) -> KV:
    """Per-layer (keys, values) of a forward's cache."""
    return [(layer.keys, layer.values) for layer in getattr(output, cache_kwarg()).layers]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``seqs`` left-padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def prefixed_batch(prompts: Sequence[Sequence[int]], kvs: Sequence[KV], cut: Sequence[int], pad_id: int,
                   device: torch.device):
    """Ids, mask and a KV cache for prompts whose first ``cut[i]`` tokens have KV ``kvs[i]``.

    Row layout: ``[pad | prefix | pad | suffix]``. The cache covers the first block (prefixes
    left-padded to the longest); a forward or ``generate`` then runs only the suffix block. Padding
    inside the row is masked and positions come from the mask, so the result equals an uncached run.
    """
    prefixes = [tuple(p[:n]) for p, n in zip(prompts, cut)]
    suffixes = [list(p[n:]) for p, n in zip(prompts, cut)]
    width_p = max(len(p) for p in prefixes)
    width_s = max(len(s) for s in suffixes)
    batch = len(prompts)
    ids = torch.full((batch, width_p + width_s), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width_p + width_s), dtype=torch.long)
    for i, (pre, suf) in enumerate(zip(prefixes, suffixes)):
        ids[i, width_p - len(pre) : width_p] = torch.tensor(pre)
        mask[i, width_p - len(pre) : width_p] = 1
        ids[i, width_p + width_s - len(suf) :] = torch.tensor(suf)
        mask[i, width_p + width_s - len(suf) :] = 1
    layers = []
    for layer in range(len(kvs[0])):
        pair = []
        for j in range(2):  # keys, values: each row's prefix copied once, right-aligned
            first = kvs[0][layer][j]
            out = first.new_empty(batch, first.shape[1], width_p, first.shape[3])
            for i, (kv, pre) in enumerate(zip(kvs, prefixes)):
                gap = width_p - len(pre)
                out[i, :, :gap] = 0
                out[i, :, gap:] = kv[layer][j][0]
            pair.append(out)
        layers.append((pair[0], pair[1]))
    return ids.to(device), mask.to(device), cache_of(layers)


def merge_prefills(parts: Sequence[tuple[list[int], tuple]], rows: int):
    """One prefill (per-layer keys, values; mask; last logits) of ``rows`` rows from prefills of
    groups of them (``parts``: (row indices, prefill)), each right-aligned to the widest."""
    width = max(part[2].shape[1] for _, part in parts)
    first_keys, first_values, first_mask, first_logits = parts[0][1]
    keys = [k.new_zeros(rows, k.shape[1], width, k.shape[3]) for k in first_keys]
    values = [v.new_zeros(rows, v.shape[1], width, v.shape[3]) for v in first_values]
    mask = first_mask.new_zeros(rows, width)
    logits = first_logits.new_empty(rows, first_logits.shape[-1])
    for index, (k_part, v_part, m_part, l_part) in parts:
        index, w = torch.tensor(index, device=mask.device), m_part.shape[1]
        for k, v, kp, vp in zip(keys, values, k_part, v_part):
            k[index, :, width - w :], v[index, :, width - w :] = kp, vp
        mask[index, width - w :], logits[index] = m_part, l_part
    return keys, values, mask, logits


def length_groups(
    lengths: Sequence[int], max_rows: int | None = None, token_budget: int | None = None, waste: float | None = None
) -> list[list[int]]:
    """Indices sorted by length, grouped greedily: each row (the longest so far) joins the last
    group unless the group would then exceed ``max_rows`` rows, ``token_budget`` padded tokens,
    or pad more than ``waste`` of its tokens. A group always has at least one row."""
    groups: list[list[int]] = []
    total = 0  # real tokens in the last group
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups:
            padded = (len(groups[-1]) + 1) * lengths[i]
            if (
                (max_rows is None or len(groups[-1]) < max_rows)
                and (token_budget is None or padded <= token_budget)
                and (waste is None or padded <= (1 + waste) * (total + lengths[i]))
            ):
                groups[-1].append(i)
                total += lengths[i]
                continue
        groups.append([i])
        total = lengths[i]
    return groups


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, limit: int | None = None) -> int:
    """How many leading tokens ``a`` and ``b`` share (at most ``limit``)."""
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit)
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def shared_starts(prompts: Sequence[Sequence[int]], floor: Sequence[int], min_gain: int) -> list[int]:
    """Per prompt, the longest start it shares with another prompt (at most its length - 1) where
    that is at least ``min_gain`` tokens past ``floor[i]`` (its cacheable system message), else
    ``floor[i]``. Candidate speeches judged for the same turn share all but the speech."""
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    best = [0] * len(prompts)
    for a, b in zip(order, order[1:]):  # in sorted order, the longest shared start is with a neighbour
        n = common_prefix(prompts[a], prompts[b])
        best[a], best[b] = max(best[a], n), max(best[b], n)
    out = []
    for p, n, f in zip(prompts, best, floor):
        n = min(n, len(p) - 1)
        out.append(n if f > 0 and n >= f + min_gain else f)
    return out


def shared_groups(prompts: Sequence[Sequence[int]], prefix_lens: Sequence[int] | None) -> list[tuple[list[int], int]] | None:
    """Rows grouped by their shareable prefix (``prefix_lens[i]`` tokens: the system message)."""
    if not prefix_lens or min(prefix_lens) <= 0:
        return None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (p, n) in enumerate(zip(prompts, prefix_lens)):
        groups.setdefault(tuple(p[:n]), []).append(i)
    return [(rows, len(key)) for key, rows in groups.items()]


class PrefixCache:
    """An LRU of KV caches of token sequences, looked up by longest common prefix.

    It holds the stories' system messages (computed once per story) and, after lean decoding,
    every generated row (prompt + speech), so a multi-turn chat's next turn only prefills the new
    messages. An entry that a newer one extends is dropped (the newer one serves it). Bounded by
    ``size`` entries and ``max_bytes`` of tensors. Entries are whole token sequences, compared
    token by token: a hash collision would silently corrupt generations. Clear it whenever the
    model's weights change (a training policy does, every step).
    """

    def __init__(self, size: int, max_bytes: int = 4 * 2**30):
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[tuple[int, ...], tuple[np.ndarray, list, int]] = OrderedDict()
        self.bytes = 0

    def longest(self, tokens: Sequence[int], limit: int | None = None) -> tuple[int, list | None]:
        """(n, kv) of the entry sharing the longest prefix with ``tokens`` (at most ``limit``):
        its first n tokens are ``tokens[:n]``; slice its KV to n before use."""
        query = np.asarray(tokens[: len(tokens) if limit is None else limit], dtype=np.int64)
        best, best_key = 0, None
        for key, (arr, _, _) in self._items.items():
            if min(len(arr), len(query)) <= best:
                continue
            n = common_prefix(arr, query)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._items.move_to_end(best_key)
        return best, self._items[best_key][1]

    def put(self, key: tuple[int, ...], value: list) -> None:
        arr = np.asarray(key, dtype=np.int64)
        for old in [k for k in self._items if len(k) < len(key) and k == key[: len(k)]]:
            self._drop(old)
        if key in self._items:
            self._drop(key)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in value)
        self._items[key] = (arr, value, nbytes)
        self.bytes += nbytes
        while len(self._items) > self.size or (self.bytes > self.max_bytes and len(self._items) > 1):
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= self._items.pop(key)[2]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
