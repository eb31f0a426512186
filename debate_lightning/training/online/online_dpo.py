"""Online (iterative) DPO on the policy's own debate speeches.

Every epoch ``DebateRolloutDataModule`` plays fresh rounds with the current policy, sampling two
or more candidates per speech and scoring each with the judge; ``rollout_examples`` turns every
speech into a (best, worst) pair (``records.preference_pairs``) and ``training_step`` applies the
same DPO objective as offline DPO (``dpo.dpo_objective``). The reference policy is the same
model with its LoRA adapters off (``reference: copy`` keeps a frozen copy for a full fine-tune).
Prompt and both completions are packed in one row, so the long debate prompt is computed once
per pair, and the pairs of one round's debaters share a row, so its story is computed once
(``policy.pack`` with ``share_prefixes``).

Logged with TRL's names: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``, ``beta``, and per epoch the
rollout's ``objective/scores``, ``objective/scores_margin``, ``val/contain_eos_token``,
``rollout/judge_accuracy``, ``time/rollout_s`` and ``time/train_s``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.dpo import DPOLossType, dpo_objective
from debate_lightning.training.online.base import OnlineObjectiveModule
from debate_lightning.training.online.records import Rollout, preference_pairs
from debate_lightning.training.policy import OptimConfig, PolicyConfig, pack
from debate_lightning.training.reference import Reference


class OnlineDPOModule(OnlineObjectiveModule):
    """Online DPO for debaters (policy, optimiser, checkpoints: ``PolicyModule``).

    Args:
        policy: the policy to train (model, LoRA, dtype, …; see ``PolicyConfig``).
        optim: AdamW, warmup then a constant rate (see ``OptimConfig``; a rollout run has no
            known length, so there is no decay schedule).
        reference: ``adapter`` (the policy with adapters off) or ``copy`` (a frozen copy).
        beta: DPO temperature β; a list gives one β per epoch (the last one repeats).
        loss_type: ``sigmoid``, ``ipo``, ``bon`` (soft labels from the judge's scores) or ``bon_ipo``.
        label_smoothing: cDPO ε for ``sigmoid``.
        sft_weight: weight of the chosen speech's NLL (``bon`` only).
        missing_eos_penalty: subtracted from the judge score of a candidate that did not end
            by itself before the pair is chosen (TRL's ``missing_eos_penalty``).
        opening_only: train only on the opening speech of each side.
        min_margin: drop pairs whose (penalised) judge scores differ by no more than this.
    """

    min_candidates = 2  # a pair needs two candidate speeches

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        optim: OptimConfig = OptimConfig(lr=5e-5),
        reference: Literal["adapter", "copy"] = "adapter",
        beta: float | list[float] = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        missing_eos_penalty: float = 0.0,
        opening_only: bool = False,
        min_margin: float = 0.0,
    ):
        betas = list(beta) if isinstance(beta, (list, tuple)) else [beta]
        if not betas or any(b <= 0 for b in betas):  # before the (slow) model load
            raise ValueError(f"beta must be > 0 (or a non-empty list of such), got {beta}")
        super().__init__(policy, optim)
        self.reference = Reference(self.policy, reference)
        self.betas = [float(b) for b in betas]
        self.loss_type, self.label_smoothing, self.sft_weight = loss_type, label_smoothing, sft_weight
        self.missing_eos_penalty, self.opening_only, self.min_margin = missing_eos_penalty, opening_only, min_margin
        self._save_hparams()

    def rollout_examples(self, rollout: Rollout) -> list[dict[str, Any]]:
        return preference_pairs(rollout, self.missing_eos_penalty, self.opening_only, self.min_margin)

    @property
    def beta(self) -> float:
        """This epoch's β."""
        return self.betas[min(self.current_epoch, len(self.betas) - 1)]

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        packed = pack([e["prompt_ids"] for e in batch], [[e["chosen_ids"], e["rejected_ids"]] for e in batch],
                      self.tokenizer.pad_token_id, share_prefixes=True).to(self.device)
        preference = torch.tensor([e["preference"] for e in batch], device=self.device)
        out = dpo_objective(self.policy, self.reference, packed, self.beta, self.loss_type, self.label_smoothing,
                            self.sft_weight, preference)
        loss = out["loss"].mean()
        self.check_finite(loss, batch_idx)
        n = len(batch)
        gaps = torch.tensor([e["chosen_score"] - e["rejected_score"] for e in batch], dtype=torch.float64)
        self.track_means({**out, "objective/scores_margin": gaps})
        self.track("beta", self.beta * n, n)
        return loss
