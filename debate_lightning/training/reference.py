"""Reference-policy strategies: where DPO (and PPO's KL) gets reference log-probs from.

- ``base``: the policy itself with its PEFT adapters disabled: the base model (no second copy).
- ``initial``: the weights training started from. A policy started from a PEFT adapter
  (``policy.adapter: SFT_RUN/adapter``) gets that adapter loaded a second time, frozen, under
  the name ``reference``, and the reference pass runs with it active (TRL's ``ref_adapter_name``
  idea: an SFT adapter is the DPO reference at the cost of a second adapter, not a second model).
  A fresh LoRA starts at B = 0, so its initial weights ARE the base: adapters off, as ``base``.
  A full fine-tune (no adapters) keeps a frozen copy, as ``copy``.
- ``copy``: a frozen deep copy of the initial policy (a second full model; full fine-tunes).
- ``adapter``: the old name of ``base``, kept so existing configs run unchanged. It means
  adapters OFF, never "the adapter the policy started from" (that is ``initial``).
- ``cached=True`` on any: log-probs are computed once per example (keyed by its token ids)
  and reused in later epochs; ``cache_path`` keeps them on disk as JSON across runs.

The reference always runs without gradient and with dropout off.

``initial_model_generator`` is the same idea for text: the policy as it was before training, as
a ``LocalGenerator`` (a judge or a baseline debater that costs no second copy with PEFT).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from debate_lightning.models.base import LocalGenerator
from debate_lightning.models.hf import live_generator
from debate_lightning.training.policy import PackedBatch, adapters_disabled, completion_logps, has_adapters

ReferenceKind = Literal["initial", "base", "copy", "adapter"]
KINDS = ("initial", "base", "copy", "adapter")
REFERENCE_ADAPTER = "reference"  # the name of the frozen second adapter of ``initial``


class Reference(torch.nn.Module):
    """Summed completion log-probs [B, K] under the reference policy.

    A ``torch.nn.Module`` so a ``copy`` reference moves with the LightningModule; its
    parameters are frozen and kept out of checkpoints by the training modules.

    Args:
        policy: the policy being trained.
        kind: ``initial``, ``base``, ``copy`` or ``adapter`` (= ``base``); see the module docstring.
        cached, cache_path: reuse reference log-probs per example (in memory / on disk).
        initial_adapter: the PEFT adapter directory the policy started from (``policy.adapter``);
            ``initial`` loads it again, frozen, as the reference.
    """

    def __init__(self, policy: torch.nn.Module, kind: ReferenceKind = "adapter", cached: bool = False,
                 cache_path: str | None = None, initial_adapter: str | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown reference {kind!r}; choose one of {KINDS} ('adapter' is the old name of "
                             "'base': adapters off)")
        if kind in ("base", "adapter") and not has_adapters(policy):
            raise ValueError(f"reference {kind!r} needs a PEFT policy (set lora): it is the policy with adapters "
                             "off; use reference 'initial' or 'copy' for a full fine-tune")
        self.kind = kind
        self._policy = [policy]  # a list, so the policy is not registered twice as a submodule
        self.copy = None
        self.adapter_name: str | None = None
        if kind == "copy" or (kind == "initial" and not has_adapters(policy)):
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)
        elif kind == "initial" and initial_adapter is not None:
            self.adapter_name = REFERENCE_ADAPTER
            trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
            was_training = policy.training  # PEFT puts the whole model in eval mode for a frozen adapter
            policy.load_adapter(initial_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)  # type: ignore[operator]
            policy.train(was_training)
            policy.set_adapter(self._trained_adapter)  # type: ignore[operator]
            for n, p in policy.named_parameters():  # the second adapter is frozen; the trained one unchanged
                p.requires_grad_(n in trainable)
        # what the reference log-probs are of: ``base`` for adapters off, else the initial weights
        self.semantics = "base" if kind in ("base", "adapter") or (kind == "initial" and self.copy is None
                                                                   and self.adapter_name is None) else "initial"
        self.cached = cached or cache_path is not None
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, list[float]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text())
        self.hits = self.misses = 0

    @property
    def _trained_adapter(self) -> str:
        names = [n for n in self._policy[0].peft_config if n != REFERENCE_ADAPTER]  # type: ignore[union-attr]
        return names[0]

    @contextlib.contextmanager
    def _reference_weights(self) -> Iterator[None]:
        """The policy as the reference: adapters off, or the frozen ``reference`` adapter active."""
        policy = self._policy[0]
        if self.adapter_name is None:
            with adapters_disabled(policy):
                yield
            return
        trained = self._trained_adapter
        grads = {n: p.requires_grad for n, p in policy.named_parameters()}
        policy.set_adapter(self.adapter_name, inference_mode=True)  # type: ignore[operator]
        try:
            yield
        finally:
            policy.set_adapter(trained)  # type: ignore[operator]
            for n, p in policy.named_parameters():  # set_adapter toggles requires_grad: put it back exactly
                p.requires_grad_(grads[n])

    def token_logps(self, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, K, Lc] per-token log-probs under the reference (``policy.completion_logps``), no grad."""
        if self.copy is not None:
            with torch.no_grad():
                return completion_logps(self.copy, batch, temperature)
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), self._reference_weights():
                return completion_logps(policy, batch, temperature)
        finally:
            policy.train(was_training)

    def _compute(self, batch: PackedBatch) -> torch.Tensor:
        return self.token_logps(batch).sum(-1)

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
