"""Supervised fine-tuning on debate speeches: next-token NLL on the speech tokens only.

Batches come from ``SFTDataModule`` (tournament results and human-debate transcripts), one
prompt (the chat the debater saw) and one completion (the speech) per row; prompt tokens are
never scored, so they cost no LM-head compute either.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import completion_nll
from debate_lightning.training.policy import LoraSpec, PolicyModule, completion_logps


class SFTModule(PolicyModule):
    """Completion-only SFT of a (LoRA) policy.

    Args:
        model, lora, adapter, dtype, gradient_checkpointing, load_in_4bit: the policy, as in
            ``DPOModule``.
        loss_reduction: ``token`` (every speech token weighs the same within a micro-batch) or
            ``sequence`` (every speech weighs the same; invariant to gradient accumulation).
        lr, weight_decay, warmup_steps, scheduler: AdamW and its schedule.
        save_adapter: write the adapters as safetensors beside the config at the end of fit.
    """

    def __init__(
        self,
        model: str = "embedded",
        lora: LoraSpec | None = LoraSpec(),
        adapter: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        load_in_4bit: bool = False,
        loss_reduction: Literal["token", "sequence"] = "token",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: Literal["constant", "linear", "cosine"] = "constant",
        save_adapter: bool = True,
    ):
        super().__init__(model, lora, adapter, dtype, gradient_checkpointing, load_in_4bit, lr, weight_decay,
                         warmup_steps, scheduler, save_adapter)
        self._save_hparams(lora)
        self.loss_reduction = loss_reduction

    def _nll(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        packed = batch["packed"]
        token_logps = completion_logps(self.policy, packed)[:, 0]
        mask = packed.completion_mask[:, 0]
        return completion_nll(token_logps, mask, self.loss_reduction), token_logps, mask

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, token_logps, mask = self._nll(batch)
        self.check_finite(loss, batch_idx)
        n_tokens = mask.sum()
        self.track("loss", -(token_logps.detach() * mask).sum(), n_tokens)  # token-weighted over the step
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, _, mask = self._nll(batch)
        self.log("eval/loss", loss, on_epoch=True, sync_dist=True, batch_size=int(mask.shape[0]))
