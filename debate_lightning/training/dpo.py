"""DPO and its variants (IPO, soft-label best-of-N) as a LightningModule.

One forward pass per micro-batch scores chosen and rejected together with the prompt computed
once per pair (``policy.pack``: prompt + chosen + rejected in one row, rejected hidden from
chosen by the attention mask). The reference log-probs come from the same model with adapters
disabled, or a frozen copy, optionally cached per pair (``reference.py``). Losses are the pure
functions of ``losses.py``; metrics carry TRL's names.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import dpo_loss
from debate_lightning.training.policy import LoraSpec, PolicyModule, completion_logps
from debate_lightning.training.reference import Reference


class DPOModule(PolicyModule):
    """Direct preference optimisation of a (LoRA) policy.

    Args:
        model: ``embedded``, a model directory, a hub id or a GGUF file.
        lora: LoRA settings; null for a full fine-tune (then ``reference`` must be ``copy``).
        adapter: start from this PEFT adapter directory (e.g. an SFT run's ``adapter``).
        dtype: weight dtype (``float32`` on CPU; use trainer.precision ``bf16-mixed`` on GPUs).
        gradient_checkpointing: recompute activations in backward to save memory.
        load_in_4bit: quantise the base to 4-bit NF4 (bitsandbytes, CUDA only).
        reference: ``adapter`` (the policy with adapters off) or ``copy`` (a frozen copy).
        reference_cache: compute each pair's reference log-probs once and reuse them in later
            epochs.
        reference_cache_path: a JSON file that keeps that cache across runs (implies the cache).
        beta: the KL strength β.
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``bon`` (soft-label), ``bon_ipo``; see losses.py.
        label_smoothing: cDPO ε for ``sigmoid``.
        sft_weight: weight of the chosen completion's NLL (``bon`` only).
        lr, weight_decay, warmup_steps, scheduler: AdamW and its schedule (per optimizer step).
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
        reference: Literal["adapter", "copy"] = "adapter",
        reference_cache: bool = False,
        reference_cache_path: str | None = None,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "ipo", "bon", "bon_ipo"] = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: Literal["constant", "linear", "cosine"] = "constant",
        save_adapter: bool = True,
    ):
        super().__init__(model, lora, adapter, dtype, gradient_checkpointing, load_in_4bit, lr, weight_decay,
                         warmup_steps, scheduler, save_adapter)
        self._save_hparams(lora)
        self.reference = Reference(self.policy, reference, reference_cache, reference_cache_path)
        self.beta, self.loss_type, self.label_smoothing, self.sft_weight = beta, loss_type, label_smoothing, sft_weight
        self._cache_prefix = f"{model}|{adapter}|"

    def forward_pairs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-pair losses, rewards and log-probs for a batch from ``PreferenceDataModule``."""
        packed = batch["packed"]
        logps = completion_logps(self.policy, packed).sum(-1)  # [B, 2]
        keys = [self._cache_prefix + k for k in batch["keys"]] if "keys" in batch else None
        ref = self.reference(packed, keys)
        lengths = packed.completion_lengths
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing, preference=batch.get("preference"),
            chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1], sft_weight=self.sft_weight)
        return {"losses": losses, "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                "logps/chosen": logps[:, 0].detach(), "logps/rejected": logps[:, 1].detach()}

    def _track_pairs(self, out: dict[str, torch.Tensor], prefix: str = "") -> None:
        n = out["losses"].shape[0]
        margins = out["rewards/chosen"] - out["rewards/rejected"]
        values = {"loss": out["losses"].detach(), "rewards/chosen": out["rewards/chosen"],
                  "rewards/rejected": out["rewards/rejected"], "rewards/margins": margins,
                  "rewards/accuracies": (margins > 0).float(), "logps/chosen": out["logps/chosen"],
                  "logps/rejected": out["logps/rejected"]}
        for name, v in values.items():
            if prefix:
                self.log(prefix + name, v.mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
            else:
                self.track(name, v.sum(), n)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.forward_pairs(batch)
        loss = out["losses"].mean()
        self.check_finite(loss, batch_idx)
        self._track_pairs(out)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._track_pairs(self.forward_pairs(batch), prefix="eval/")

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.reference.save_cache()
