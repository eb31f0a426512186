"""GRPO (and Dr. GRPO, DAPO, RLOO) for debaters: group baselines over candidate speeches.

Every epoch ``DebateRolloutDataModule`` plays fresh rounds with the current policy and samples a
group of G = ``data.num_candidates`` speeches for every turn the policy speaks, in one batched
generate call. Each member is rewarded with the frozen judge's P(own side):

- ``reward: final``: at the end of the round continued from that member. The round goes on with
  the first member; every other member's round is continued to its end too, all of them batched
  per turn, and one judge call scores rounds and continuations (``debater.play_rollout``);
- ``reward: immediate``: right after the speech (the best member continues the round).

``correctness_weight`` adds ``+w`` for arguing the correct answer and ``−w`` otherwise.
``rollout_examples`` turns each speech into one example holding its whole group, with the
advantage of each member relative to its group (``records.candidate_groups``,
``losses.group_advantages``: ``grpo``, ``dr_grpo`` or ``rloo``). The group is the (round, side,
turn) state with ``role_conditioned`` (default), else the whole round, both roles pooled.

``training_step`` packs each prompt ONCE with all G completions (``policy.pack``): the long debate
prompt, story included, is computed once per group rather than G times. It takes
``num_iterations`` optimizer steps on the batch with the clipped token-level loss
(``losses.grpo_loss``: ``loss_type`` ``grpo``, ``dr_grpo`` or ``dapo``; KL k3 to the reference
with ``beta > 0``). The "old" log-probs are the policy's before the first step, so with
``num_iterations: 1`` the ratio is 1 and only its gradient counts (no extra forward).

Logged per step with TRL's GRPO names: ``loss``, ``reward``, ``reward_std`` (mean within-group
std), ``frac_reward_zero_std``, ``kl`` (with ``beta > 0``), ``clip_ratio/low_mean``,
``clip_ratio/high_mean``, ``clip_ratio/region_mean``, ``completions/mean_length``,
``completions/min_length``, ``completions/max_length``, ``completions/clipped_ratio`` (share that
ran out of tokens), ``completions/mean_terminated_length``; per epoch the rollout's
``objective/scores``, ``rollout/judge_accuracy``, ``time/rollout_s`` and ``time/train_s``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from debate_lightning.training.losses import grpo_loss
from debate_lightning.training.online.base import OnlineObjectiveModule
from debate_lightning.training.online.records import Rollout, candidate_groups
from debate_lightning.training.policy import OptimConfig, PolicyConfig, completion_logps, pack
from debate_lightning.training.reference import Reference


class GRPOModule(OnlineObjectiveModule):
    """Group-relative policy optimisation on candidate speeches (policy, checkpoints: ``PolicyModule``).

    Args:
        policy: the policy to train (model, LoRA, dtype, …; see ``PolicyConfig``).
        optim: AdamW, warmup then a constant rate (see ``OptimConfig``).
        reference: the KL reference: ``adapter`` (the policy with adapters off) or ``copy``
            (a frozen copy); only used with ``beta > 0``.
        reward: ``final`` (P(own side) at the end of the member's own round) or ``immediate``
            (right after its speech).
        correctness_weight: ``+w`` when the member's side is the correct answer, ``−w`` otherwise.
        advantage: ``grpo`` ((r − mean) / std), ``dr_grpo`` (r − mean) or ``rloo`` (leave-one-out).
        role_conditioned: baseline within each (round, side, turn); false pools the whole round.
        loss_type: ``grpo`` (per-sequence token mean), ``dr_grpo`` (sum / (B · max tokens)) or
            ``dapo`` (sum / tokens), as TRL defines them.
        beta: weight of the k3 KL to the reference (0 = no reference pass at all).
        epsilon: lower clip ε of the ratio; ``epsilon_high`` the upper one (DAPO's clip-higher;
            null = ``epsilon``).
        num_iterations: optimizer steps per batch of groups (TRL's μ).
        temperature: the temperature of the log-probs; null = the rollout's sampling temperature.
        max_grad_norm: gradient clipping by norm (0 = off).
        opening_only: train only on each side's opening speech.
    """

    min_candidates = 2  # a group baseline needs two members

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        optim: OptimConfig = OptimConfig(lr=1e-5),
        reference: Literal["adapter", "copy"] = "adapter",
        reward: Literal["final", "immediate"] = "final",
        correctness_weight: float = 0.0,
        advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo",
        role_conditioned: bool = True,
        loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo",
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        num_iterations: int = 1,
        temperature: float | None = None,
        max_grad_norm: float = 1.0,
        opening_only: bool = False,
    ):
        for name, value, allowed in (("reward", reward, ("final", "immediate")),
                                     ("advantage", advantage, ("grpo", "dr_grpo", "rloo")),
                                     ("loss_type", loss_type, ("grpo", "dr_grpo", "dapo"))):
            if value not in allowed:  # before the (slow) model load
                raise ValueError(f"{name}: choose one of {', '.join(allowed)}; got {value!r}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        if beta < 0 or epsilon <= 0 or (epsilon_high is not None and epsilon_high <= 0):
            raise ValueError(f"beta must be >= 0 and epsilon, epsilon_high > 0; got {beta}, {epsilon}, {epsilon_high}")
        super().__init__(policy, optim)
        self.automatic_optimization = False  # num_iterations optimizer steps per batch
        self.candidate_reward = reward
        self.reference = Reference(self.policy, reference) if beta > 0 else None
        self._temperature = temperature
        self._save_hparams()

    def rollout_examples(self, rollout: Rollout) -> list[dict[str, Any]]:
        h = self.hparams
        return candidate_groups(rollout, h.advantage, h.role_conditioned, h.correctness_weight, h.opening_only)

    @property
    def max_completion_length(self) -> int | None:
        """The rollout's token budget (``dr_grpo``'s constant normaliser)."""
        return getattr(self.rollout_sampling, "max_new_tokens", None)

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        h = self.hparams
        # the prompt once, then every member (shorter groups padded with empty completions, left out
        # of the loss); the groups of one round's debaters share a row, their story once
        K = max(len(e["completions"]) for e in batch)
        packed = pack([e["prompt_ids"] for e in batch], [e["completions"] + [[]] * (K - len(e["completions"]))
                                                         for e in batch], self.tokenizer.pad_token_id,
                      share_prefixes=True).to(self.device)
        real = torch.tensor([k < len(e["completions"]) for e in batch for k in range(K)], device=self.device)
        mask = packed.completion_mask.flatten(0, 1)[real]  # [N, Lc], N = real members
        advantages = torch.tensor([a for e in batch for a in e["advantages"]], device=self.device)
        T = self.temperature
        with torch.no_grad():
            old = completion_logps(self.policy, packed, T).flatten(0, 1)[real] if h.num_iterations > 1 else None
            ref = self.reference.token_logps(packed, T).flatten(0, 1)[real] if self.reference is not None else None
        stats: dict[str, list[torch.Tensor]] = {}
        for _ in range(h.num_iterations):
            logp = completion_logps(self.policy, packed, T).flatten(0, 1)[real]
            loss, step_stats = grpo_loss(logp, old if old is not None else logp.detach(), advantages, mask, ref,
                                         h.beta, h.epsilon, h.epsilon_high, h.loss_type, self.max_completion_length)
            self.manual_step(loss, batch_idx, h.max_grad_norm)
            for key, value in {"loss": loss.detach(), **step_stats}.items():
                stats.setdefault(key, []).append(value)
        self.log_dict({**{k: torch.stack(v).mean() for k, v in stats.items()}, **group_stats(batch)},
                      on_step=True, on_epoch=False, batch_size=len(batch))


def group_stats(batch: list[dict[str, Any]]) -> dict[str, float]:
    """TRL's GRPO reward and completion metrics of a batch of groups."""
    rewards = [torch.tensor(e["rewards"], dtype=torch.float64) for e in batch]
    stds = torch.stack([r.std() if len(r) > 1 else torch.zeros((), dtype=torch.float64) for r in rewards])
    lengths = torch.tensor([len(c) for e in batch for c in e["completions"]], dtype=torch.float64)
    finished = torch.tensor([f for e in batch for f in e["finished"]], dtype=torch.bool)
    terminated = lengths[finished]
    return {
        "reward": float(torch.cat(rewards).mean()),
        "reward_std": float(stds.mean()),
        "frac_reward_zero_std": float(torch.isclose(stds, torch.zeros_like(stds)).double().mean()),
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~finished).double().mean()),
        "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0,
    }
