"""Online (iterative) DPO on the policy's own debate speeches.

Every epoch ``DebateRolloutDataModule`` plays fresh rounds with the current policy, sampling two
or more candidates per speech and scoring each with the judge; ``rollout_examples`` turns every
speech into a (best, worst) pair (``rollouts.preference_pairs``) and ``training_step`` applies a
DPO loss from ``training/losses.py``. The reference policy is the same model with its LoRA
adapters off (``reference: copy`` keeps a frozen copy for a full fine-tune). Prompt and both completions are
packed in one row, so the long debate prompt is computed once per pair (``policy.pack``).

Logged with TRL's names: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``, ``beta``, and per epoch the
rollout's ``objective/scores``, ``objective/scores_margin``, ``val/contain_eos_token``,
``rollout/judge_accuracy``, ``time/rollout_s`` and ``time/train_s``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch

from debate_lightning.training.losses import dpo_loss
from debate_lightning.training.policy import LoraSpec, PolicyModule, completion_logps, pack
from debate_lightning.training.reference import Reference
from debate_lightning.training.rollouts import DebateRolloutDataModule, Rollout, log_rollout_metrics, preference_pairs


class OnlineDPOModule(PolicyModule):
    """Online DPO for debaters (policy construction, optimiser, checkpoints: ``PolicyModule``).

    Args:
        model: the policy to train: ``embedded``, a directory, a hub id or a GGUF file.
        lora: LoRA settings; null for a full fine-tune (then ``reference`` must be ``copy``).
        adapter: start from this PEFT adapter directory (e.g. an SFT or DPO run's ``adapter``).
        dtype: parameter dtype (``float32`` on CPUs without fast bf16).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        reference: ``adapter`` (the policy with adapters off) or ``copy`` (a frozen copy).
        beta: DPO temperature β; a list gives one β per epoch (the last one repeats).
        loss_type: ``sigmoid``, ``ipo``, ``bon`` (soft labels from the judge's scores) or ``bon_ipo``.
        label_smoothing: cDPO ε for ``sigmoid``.
        sft_weight: weight of the chosen speech's NLL (``bon`` only).
        missing_eos_penalty: subtracted from the judge score of a candidate that did not end
            by itself before the pair is chosen (TRL's ``missing_eos_penalty``).
        opening_only: train only on the opening speech of each side.
        min_margin: drop pairs whose (penalised) judge scores differ by no more than this.
        lr, weight_decay: AdamW.
        warmup_steps: linear learning-rate warmup over this many optimizer steps, then constant
            (a rollout run has no known length, so there is no decay schedule).
        save_adapter: write the adapters as safetensors beside the config at the end of fit.
    """

    def __init__(
        self,
        model: str = "embedded",
        lora: LoraSpec | None = LoraSpec(),
        adapter: str | None = None,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        reference: Literal["adapter", "copy"] = "adapter",
        beta: float | list[float] = 0.1,
        loss_type: Literal["sigmoid", "ipo", "bon", "bon_ipo"] = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        missing_eos_penalty: float = 0.0,
        opening_only: bool = False,
        min_margin: float = 0.0,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        save_adapter: bool = True,
    ):
        betas = list(beta) if isinstance(beta, (list, tuple)) else [beta]
        if not betas or any(b <= 0 for b in betas):
            raise ValueError(f"beta must be > 0 (or a non-empty list of such), got {beta}")
        super().__init__(model, lora, adapter, dtype, gradient_checkpointing, False, lr, weight_decay,
                         warmup_steps, "constant", save_adapter)
        self._save_hparams(lora)
        self.reference = Reference(self.policy, reference)
        self.betas = [float(b) for b in betas]
        self.loss_type, self.label_smoothing, self.sft_weight = loss_type, label_smoothing, sft_weight
        self.missing_eos_penalty, self.opening_only, self.min_margin = missing_eos_penalty, opening_only, min_margin

    # -- rollouts -> examples -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, DebateRolloutDataModule) and dm.num_candidates < 2:
            raise ValueError(f"online DPO compares candidate speeches: set data.num_candidates >= 2 "
                             f"(got {dm.num_candidates})")

    def rollout_examples(self, rollout: Rollout) -> list[dict[str, Any]]:
        return preference_pairs(rollout, self.missing_eos_penalty, self.opening_only, self.min_margin)

    @property
    def beta(self) -> float:
        """This epoch's β."""
        return self.betas[min(self.current_epoch, len(self.betas) - 1)]

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        packed = pack([e["prompt_ids"] for e in batch], [[e["chosen_ids"], e["rejected_ids"]] for e in batch],
                      self.tokenizer.pad_token_id).to(self.device)
        logps = completion_logps(self.policy, packed).sum(-1)  # [B, 2]
        ref = self.reference(packed)
        lengths = packed.completion_lengths
        preference = torch.tensor([e["preference"] for e in batch], device=self.device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing, preference=preference, chosen_lengths=lengths[:, 0],
            rejected_lengths=lengths[:, 1], sft_weight=self.sft_weight)
        loss = losses.mean()
        self.check_finite(loss, batch_idx)
        n = len(batch)
        margins = chosen_rewards - rejected_rewards
        gaps = torch.tensor([e["chosen_score"] - e["rejected_score"] for e in batch], dtype=torch.float64)
        for name, v in {"loss": losses.detach(), "rewards/chosen": chosen_rewards,
                        "rewards/rejected": rejected_rewards, "rewards/margins": margins,
                        "rewards/accuracies": (margins > 0).float(), "logps/chosen": logps[:, 0].detach(),
                        "logps/rejected": logps[:, 1].detach(), "objective/scores_margin": gaps}.items():
            self.track(name, v.sum(), n)
        self.track("beta", self.beta * n, n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._train_end = time.perf_counter()  # callbacks' evaluations after it are not training time

    def on_train_epoch_end(self) -> None:
        log_rollout_metrics(self, getattr(self, "_train_end", None))

    def configure_optimizers(self):
        # Not PolicyModule's: its schedules ask the trainer for the run's length, which makes the
        # fit loop open the rollout stream early (before a resumed run's state is restored).
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
