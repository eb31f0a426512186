"""Reference-policy strategies: where DPO (and PPO's KL) gets reference log-probs from.

- ``adapter``: the policy itself with its PEFT adapters disabled (no second copy; the default).
- ``copy``: a frozen copy of the initial policy, for a full fine-tune (no adapters to turn off).
- ``cached=True`` on either: log-probs are computed once per example (keyed by its token ids)
  and reused in later epochs; ``cache_path`` keeps them on disk as JSON across runs.

The reference always runs without gradient and with dropout off.

``initial_model_generator`` is the same idea for text: the policy as it was before training, as
a ``LocalGenerator`` (a judge or a baseline debater that costs no second copy with PEFT).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import torch

from debate_lightning.models.base import LocalGenerator
from debate_lightning.models.hf import live_generator
from debate_lightning.training.policy import PackedBatch, adapters_disabled, completion_logps, has_adapters

ReferenceKind = Literal["adapter", "copy"]


class Reference(torch.nn.Module):
    """Summed completion log-probs [B, K] under the reference policy.

    A ``torch.nn.Module`` so a ``copy`` reference moves with the LightningModule; its
    parameters are frozen and kept out of checkpoints by the training modules.
    """

    def __init__(self, policy: torch.nn.Module, kind: ReferenceKind = "adapter", cached: bool = False,
                 cache_path: str | None = None):
        super().__init__()
        if kind == "adapter" and not has_adapters(policy):
            raise ValueError("reference 'adapter' needs a PEFT policy (set lora); use reference 'copy' for a full "
                             "fine-tune")
        if kind not in ("adapter", "copy"):
            raise ValueError(f"unknown reference {kind!r}; choose 'adapter' or 'copy'")
        self.kind = kind
        self._policy = [policy]  # a list, so the policy is not registered twice as a submodule
        self.copy = None
        if kind == "copy":
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)
        self.cached = cached or cache_path is not None
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, list[float]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text())
        self.hits = self.misses = 0

    def _compute(self, batch: PackedBatch) -> torch.Tensor:
        if self.copy is not None:
            with torch.no_grad():
                return completion_logps(self.copy, batch).sum(-1)
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), adapters_disabled(policy):
                return completion_logps(policy, batch).sum(-1)
        finally:
            policy.train(was_training)

    def forward(self, batch: PackedBatch, keys: list[str] | None = None) -> torch.Tensor:
        if not self.cached or keys is None:
            return self._compute(batch)
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            sub = batch.rows(missing)
            for i, row in zip(missing, self._compute(sub).tolist()):
                self.cache[keys[i]] = row
        device = batch.input_ids.device
        return torch.tensor([self.cache[k] for k in keys], dtype=torch.float32, device=device)

    def save_cache(self) -> None:
        if self.cache_path is not None and self.cache:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_path)


def initial_model_generator(policy: torch.nn.Module, tokenizer: Any, name: str,
                            max_batch_size: int = 32) -> LocalGenerator:
    """The policy as it was before training: adapters off (PEFT), else a frozen copy made now."""
    if has_adapters(policy):
        return live_generator(policy, tokenizer, name, max_batch_size, base_only=True)
    frozen = copy.deepcopy(policy).eval().requires_grad_(False)
    return live_generator(frozen, tokenizer, name, max_batch_size)
