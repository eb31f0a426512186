"""What the training floor needs across processes, on top of Lightning's strategy.

``shard`` is the round-robin share of a list a rank plays; ``gather_json`` brings every rank's
JSON-able result to every rank through the strategy's ``all_gather`` (UTF-8 bytes in a tensor, so
it works on gloo and NCCL alike, with no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Items ``rank, rank + world_size, …``: the shards of all ranks are ``items``, each once."""
    return list(items[rank::world_size])


def gather_json(trainer: Any, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` on one process). Every rank must call it."""
    if trainer is None or trainer.world_size == 1:
        return [obj]
    strategy = trainer.strategy
    device = strategy.root_device
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    sizes = [int(s) for s in strategy.all_gather(torch.tensor([data.numel()], device=device)).flatten().tolist()]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    every = strategy.all_gather(padded).reshape(len(sizes), -1).cpu()
    return [json.loads(bytes(every[r, : sizes[r]].tolist()).decode()) for r in range(len(sizes))]
