"""DPO and its variants (IPO, soft-label best-of-N): the objective, and its LightningModule.

One forward pass per micro-batch scores chosen and rejected together with the prompt computed
once per pair (``policy.pack``: prompt + chosen + rejected in one row, rejected hidden from
chosen by the attention mask). The reference log-probs come from the weights training started
from (``initial``: for a policy started from an SFT adapter, that adapter loaded a second time,
frozen), the base model (``base``: adapters disabled), or a frozen copy, optionally cached per
pair (``reference.py``). Losses are the pure functions of ``losses.py``.

``dpo_objective`` is the one place the DPO loss meets its metrics; ``DPOModule`` (offline pairs)
and ``online.online_dpo.OnlineDPOModule`` (pairs from the policy's own debates) both call it, so
the two log the same TRL names: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from debate_lightning.training.losses import dpo_loss
from debate_lightning.training.policy import OptimConfig, PackedBatch, PolicyConfig, PolicyModule, completion_logps
from debate_lightning.training.reference import Reference

log = logging.getLogger(__name__)

DPOLossType = Literal["sigmoid", "ipo", "bon", "bon_ipo"]


def dpo_objective(
    policy: torch.nn.Module,
    reference: Reference,
    packed: PackedBatch,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    preference: torch.Tensor | None = None,
    keys: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-pair DPO losses and TRL's pair metrics for rows packed as (prompt, chosen, rejected).

    Every value is ``[B]``: ``loss`` keeps its graph (the module averages it and steps on it);
    the rest are detached metrics. ``keys`` name the pairs for a cached reference.
    """
    logps = completion_logps(policy, packed).sum(-1)  # [B, 2]
    ref = reference(packed, keys)
    lengths = packed.completion_lengths
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta, loss_type=loss_type,
        label_smoothing=label_smoothing, preference=preference, chosen_lengths=lengths[:, 0],
        rejected_lengths=lengths[:, 1], sft_weight=sft_weight)
    margins = chosen_rewards - rejected_rewards
    return {"loss": losses, "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
            "rewards/margins": margins, "rewards/accuracies": (margins > 0).float(),
            "logps/chosen": logps[:, 0].detach(), "logps/rejected": logps[:, 1].detach()}


class DPOModule(PolicyModule):
    """Direct preference optimisation of a (LoRA) policy on preference pairs.

    Args:
        policy: the policy to train (model, LoRA, dtype, …; see ``PolicyConfig``).
        optim: AdamW and its schedule, per optimizer step (see ``OptimConfig``).
        reference: ``initial`` (the weights training started from: with ``policy.adapter: SFT_DIR``
            the SFT adapter, frozen, so the step-0 loss is ln 2; a fresh LoRA starts at the base),
            ``base`` (adapters off: the base model, whatever adapter the policy started from),
            ``copy`` (a frozen full copy, for a full fine-tune) or ``adapter`` (the old name of
            ``base``, kept for existing configs).
        reference_cache: compute each pair's reference log-probs once and reuse them in later
            epochs.
        reference_cache_path: a JSON file that keeps that cache across runs (implies the cache).
        beta: the KL strength β.
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``bon`` (soft-label), ``bon_ipo``; see losses.py.
        label_smoothing: cDPO ε for ``sigmoid``.
        sft_weight: weight of the chosen completion's NLL (``bon`` only).
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        optim: OptimConfig = OptimConfig(lr=5e-5),
        reference: Literal["initial", "base", "copy", "adapter"] = "initial",
        reference_cache: bool = False,
        reference_cache_path: str | None = None,
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ):
        super().__init__(policy, optim)
        if reference == "adapter" and policy.adapter is not None:
            log.warning("reference 'adapter' is the BASE model (adapters off), not the adapter the policy starts "
                        "from (%s); use reference 'initial' for that", policy.adapter)
        self.reference = Reference(self.policy, reference, reference_cache, reference_cache_path,
                                   initial_adapter=policy.adapter)
        self.beta, self.loss_type, self.label_smoothing, self.sft_weight = beta, loss_type, label_smoothing, sft_weight
        # cached reference log-probs are only valid for the same reference weights
        self._cache_prefix = f"{policy.model}|{policy.adapter}|{self.reference.semantics}|"
        self._save_hparams()

    def forward_pairs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``dpo_objective`` for a batch from ``PreferenceDataModule``."""
        keys = [self._cache_prefix + k for k in batch["keys"]] if "keys" in batch else None
        return dpo_objective(self.policy, self.reference, batch["packed"], self.beta, self.loss_type,
                             self.label_smoothing, self.sft_weight, batch.get("preference"), keys)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.forward_pairs(batch)
        loss = out["loss"].mean()
        self.check_finite(loss, batch_idx)
        self.track_means(out)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.forward_pairs(batch)
        n = out["loss"].shape[0]
        for name, v in out.items():
            self.log("eval/" + name, v.detach().mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.reference.save_cache()

    def on_train_end(self) -> None:
        super().on_train_end()
        # PEFT saves every adapter it holds; the frozen ``initial`` reference is the input adapter
        # again, not a result: keep only the trained one in <run>/adapter
        if self.reference.adapter_name is not None and self.policy_config.save_adapter and self.trainer.is_global_zero:
            extra = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "adapter" / self.reference.adapter_name
            if extra.is_dir():
                shutil.rmtree(extra)
