"""DPO and its variants (IPO, soft-label best-of-N): the objective, and its LightningModule.

One forward pass per micro-batch scores chosen and rejected together with the prompt computed
once per pair (``policy.pack``: prompt + chosen + rejected in one row, rejected hidden from
chosen by the attention mask). The reference log-probs come from the same model with adapters
disabled, or a frozen copy, optionally cached per pair (``reference.py``). Losses are the pure
functions of ``losses.py``.

``dpo_objective`` is the one place the DPO loss meets its metrics; ``DPOModule`` (offline pairs)
and ``online.online_dpo.OnlineDPOModule`` (pairs from the policy's own debates) both call it, so
the two log the same TRL names: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import dpo_loss
from debate_lightning.training.policy import OptimConfig, PackedBatch, PolicyConfig, PolicyModule, completion_logps
from debate_lightning.training.reference import Reference

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
        reference: ``adapter`` (the policy with adapters off) or ``copy`` (a frozen copy).
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
        reference: Literal["adapter", "copy"] = "adapter",
        reference_cache: bool = False,
        reference_cache_path: str | None = None,
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ):
        super().__init__(policy, optim)
        self.reference = Reference(self.policy, reference, reference_cache, reference_cache_path)
        self.beta, self.loss_type, self.label_smoothing, self.sft_weight = beta, loss_type, label_smoothing, sft_weight
        # cached reference log-probs are only valid for the same initial model
        self._cache_prefix = f"{policy.model}|{policy.adapter}|"
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
