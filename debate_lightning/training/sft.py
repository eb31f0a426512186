"""Supervised fine-tuning: next-token NLL on the completion tokens only.

Batches come from ``SFTDataModule`` (tournament results and human-debate transcripts), one
prompt and one completion per row: a debater's chat and its speech (``target: speech``), or
the judge's chat and the correct answer's letter (``target: judge_verdict``, ``sft_judge.yaml``:
the loss is then the judge's NLL of the correct verdict, exactly as a tournament scores it).
Prompt tokens are never scored, so they cost no LM-head compute either.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import completion_nll
from debate_lightning.training.policy import OptimConfig, PolicyConfig, PolicyModule, completion_logps


class SFTModule(PolicyModule):
    """Completion-only SFT of a (LoRA) policy: a debater on speeches, or a judge on verdicts.

    Args:
        policy: the policy to train (model, LoRA, dtype, …; see ``PolicyConfig``).
        optim: AdamW and its schedule, per optimizer step (see ``OptimConfig``).
        loss_reduction: ``token`` (every completion token weighs the same within a micro-batch) or
            ``sequence`` (every completion weighs the same; invariant to gradient accumulation).
            A judge's verdict is one token: the two agree.
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        optim: OptimConfig = OptimConfig(lr=1e-4),
        loss_reduction: Literal["token", "sequence"] = "token",
    ):
        super().__init__(policy, optim)
        self.loss_reduction = loss_reduction
        self._save_hparams()

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
