"""PPO for debaters: reward = the judge's probability for the speaker's side.

Every epoch ``DebateRolloutDataModule`` plays fresh rounds with the current policy;
``rollout_examples`` turns each played speech into a trajectory whose reward is the final
judge's P(own side), optionally minus a baseline and plus a correctness term
(``records.trajectories``). For each rollout batch ``training_step`` (manual optimisation):

1. computes, without grad, the policy's log-probs and values of the sampled tokens (the "old"
   policy) and the reference's (the same model with adapters off);
2. builds per-token rewards ``r_t = −kl_coef·KL_t`` plus the score on the last token, with
   ``KL_t`` the k1 or k3 estimate of KL(π ‖ π_ref) (``losses.kl_penalty``);
3. gets advantages and returns by GAE (γ, λ) and whitens the advantages;
4. runs ``ppo_epochs`` passes over shuffled minibatches with the clipped policy and value
   losses, one optimizer step per minibatch.

The value head is a linear layer on the shared backbone's last hidden state (the critic shares
the policy's LoRA adapters; sheeprlhf/TRL's "shared backbone" layout). Metric names follow TRL's
PPOTrainer: ``objective/kl``, ``objective/entropy``, ``objective/non_score_reward``,
``objective/rlhf_reward``, ``objective/scores``, ``policy/approxkl_avg``, ``policy/clipfrac_avg``,
``policy/entropy_avg``, ``loss/policy_avg``, ``loss/value_avg``, ``val/clipfrac_avg``,
``val/ratio``, ``val/ratio_var``, ``val/num_eos_tokens``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import gae, kl_penalty, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from debate_lightning.training.online.base import OnlineObjectiveModule
from debate_lightning.training.online.records import Rollout, trajectories
from debate_lightning.training.policy import OptimConfig, PackedBatch, PolicyConfig, adapters_disabled, pack
from debate_lightning.training.reference import Reference
from debate_lightning.training.sharding import is_sharded


def response_forward(
    model: torch.nn.Module, batch: PackedBatch, value_head: torch.nn.Module | None = None, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Token log-probs, values and entropies of each example's one response, each [B, T].

    ``batch`` holds one completion per prompt (``pack`` with K = 1). The value of token t is
    read off the hidden state that predicts it, i.e. the state before the token is emitted.
    Logits are divided by ``temperature`` (the sampling temperature, as TRL does), so the ratios
    and KL refer to the distribution the rollout sampled from.
    """
    at = batch.predict_at[:, 0]  # [B, T]
    rows = batch.row_of[:, None]  # example b's positions are in row row_of[b]
    if is_sharded(model):
        # FSDP: enter through the root (its unit gathers embeddings, norm and head); the LM head
        # runs at the positions some row predicts a response token from
        keep = torch.unique(at)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=False, output_hidden_states=True, logits_to_keep=keep)
        h = out.hidden_states[-1][rows, at]  # [B, T, H]
        logits = out.logits[rows, torch.searchsorted(keep, at)].float() / temperature
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    position_ids=batch.position_ids, use_cache=False).last_hidden_state
        h = hidden[rows, at]  # [B, T, H]
        logits = base.get_output_embeddings()(h).float() / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, batch.targets[:, 0][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = value_head(h.float()).squeeze(-1) if value_head is not None else None
    return logp, values, entropy


class PPOModule(OnlineObjectiveModule):
    """PPO with a value head on the shared backbone (policy, checkpoints, export: ``PolicyModule``).

    Args:
        policy: the policy to train (model, LoRA, dtype, …; see ``PolicyConfig``).
        optim: AdamW over the policy's trainable weights and the value head, warmup then a
            constant rate (see ``OptimConfig``).
        reference: ``adapter`` (the policy with adapters off) or ``copy`` (a frozen copy).
        ppo_epochs: passes over each rollout batch.
        minibatch_size: trajectories per optimizer step within a pass.
        clip: PPO ratio clip ε.
        value_clip: value clip range around the old values.
        vf_coef: weight of the value loss.
        kl_coef: weight of the per-token KL penalty in the reward.
        kl_estimator: ``k1`` (log-ratio, TRL's default) or ``k3`` (unbiased, non-negative).
        gamma: discount γ of GAE.
        lam: λ of GAE.
        whiten_advantages: normalise advantages to zero mean, unit variance per rollout batch.
        baseline: ``constant`` (subtract ``baseline_value``), ``batch_mean`` or ``none``.
        baseline_value: the constant baseline (0.5 = a coin-flip verdict earns nothing).
        correctness_weight: reward shaping: + w when the speaker's side is the correct answer,
            − w when it is not (0 = pure persuasion reward).
        opening_only: train only on each side's opening speech.
        temperature: the rollout's sampling temperature; null reads it from the DataModule.
        max_grad_norm: gradient clipping by norm (0 = off).
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        optim: OptimConfig = OptimConfig(lr=1e-5),
        reference: Literal["adapter", "copy"] = "adapter",
        ppo_epochs: int = 2,
        minibatch_size: int = 4,
        clip: float = 0.2,
        value_clip: float = 0.2,
        vf_coef: float = 0.1,
        kl_coef: float = 0.05,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        baseline: Literal["none", "constant", "batch_mean"] = "constant",
        baseline_value: float = 0.5,
        correctness_weight: float = 0.0,
        opening_only: bool = False,
        temperature: float | None = None,
        max_grad_norm: float = 1.0,
    ):
        if kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator: choose 'k1', 'k2' or 'k3', got {kl_estimator!r}")
        if baseline not in ("none", "constant", "batch_mean"):
            raise ValueError(f"baseline: choose 'none', 'constant' or 'batch_mean', got {baseline!r}")
        if ppo_epochs < 1 or minibatch_size < 1:
            raise ValueError("ppo_epochs and minibatch_size must be >= 1")
        super().__init__(policy, optim)
        self.automatic_optimization = False  # several optimizer steps per rollout batch
        hidden = self.policy.get_output_embeddings().in_features  # type: ignore[operator]
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.reference = Reference(self.policy, reference)
        self._temperature = temperature
        self._save_hparams()

    def rollout_examples(self, rollout: Rollout) -> list[dict[str, Any]]:
        h = self.hparams
        return trajectories(rollout, h.baseline, h.baseline_value, h.correctness_weight, h.opening_only)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        h = self.hparams
        packed = pack([e["prompt_ids"] for e in batch], [[e["response_ids"]] for e in batch],
                      self.tokenizer.pad_token_id).to(self.device)
        mask = packed.completion_mask[:, 0].float()  # [B, T]
        B, T = mask.shape
        with torch.no_grad():
            old_logp, old_values, _ = response_forward(self.policy, packed, self.value_head, self.temperature)
            if self.reference.copy is not None:
                ref_logp, _, _ = response_forward(self.reference.copy, packed, None, self.temperature)
            else:
                with adapters_disabled(self.policy):
                    ref_logp, _, _ = response_forward(self.policy, packed, None, self.temperature)
            kl = kl_penalty(old_logp, ref_logp, h.kl_estimator) * mask
            non_score = -h.kl_coef * kl
            scores = torch.tensor([e["reward"] for e in batch], device=self.device, dtype=torch.float32)
            last = (mask.sum(-1).long() - 1).clamp(min=0)
            rewards = non_score.clone()
            rewards[torch.arange(B, device=self.device), last] += scores
            advantages, returns = gae(rewards, old_values, mask, h.gamma, h.lam)
            if h.whiten_advantages:
                advantages = whiten(advantages, mask)

        stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("pg", "vf", "clipfrac", "approxkl", "vf_clipfrac",
                                                                "entropy", "ratio")}
        for _ in range(h.ppo_epochs):
            for idx in torch.randperm(B, device=self.device).split(h.minibatch_size):
                mb = packed.rows(idx)
                m = mask[idx]
                logp, values, entropy = response_forward(self.policy, mb, self.value_head, self.temperature)
                pg_loss, pg_stats = ppo_policy_loss(logp, old_logp[idx], advantages[idx], m, h.clip)
                vf_loss, vf_stats = ppo_value_loss(values, old_values[idx], returns[idx], m, h.value_clip)
                loss = pg_loss + h.vf_coef * vf_loss
                self.manual_step(loss, batch_idx, h.max_grad_norm)
                with torch.no_grad():
                    stats["pg"].append(pg_loss.detach())
                    stats["vf"].append(vf_loss.detach())
                    stats["clipfrac"].append(pg_stats["clipfrac"])
                    stats["approxkl"].append(pg_stats["approx_kl"])
                    stats["vf_clipfrac"].append(vf_stats["vf_clipfrac"])
                    stats["entropy"].append(masked_mean(entropy.detach(), m))
                    stats["ratio"].append(masked_mean(torch.exp(logp.detach() - old_logp[idx]), m))

        def avg(key: str) -> torch.Tensor:
            return torch.stack(stats[key]).mean()

        ratio = torch.stack(stats["ratio"])
        score_values = torch.tensor([e["score"] for e in batch], dtype=torch.float32)
        self.log_dict({
            "objective/kl": kl.sum(-1).mean(),
            "objective/entropy": (-old_logp * mask).sum(-1).mean(),
            "objective/non_score_reward": non_score.sum(-1).mean(),
            "objective/rlhf_reward": (scores + non_score.sum(-1)).mean(),
            "objective/scores": score_values.mean(),
            "policy/approxkl_avg": avg("approxkl"),
            "policy/clipfrac_avg": avg("clipfrac"),
            "policy/entropy_avg": avg("entropy"),
            "loss/policy_avg": avg("pg"),
            "loss/value_avg": avg("vf"),
            "val/clipfrac_avg": avg("vf_clipfrac"),
            "val/ratio": ratio.mean(),
            "val/ratio_var": ratio.var() if ratio.numel() > 1 else torch.zeros(()),
            "val/num_eos_tokens": float(sum(bool(e["finished"]) for e in batch)),
        }, on_step=True, on_epoch=False, batch_size=B)
