"""``OnlineObjectiveModule``: the base of every objective that trains on the policy's own debates.

Online DPO and PPO (and GRPO next) share everything but the step: a policy built by
``PolicyModule``, a ``DebateRolloutDataModule`` that plays fresh rounds at the start of each
epoch, and per-epoch rollout metrics. A subclass writes two things:

- ``rollout_examples(rollout) -> list[dict]``: the examples the DataModule batches for this
  objective (``records.preference_pairs``, ``records.trajectories``, …);
- ``training_step(batch, batch_idx)``: a batch is a list of those examples.

It may set ``min_candidates`` (online DPO compares candidates, so it needs two per speech).

The learning rate has warmup and then stays constant: a rollout run has no known length (the
DataModule plays its epochs on demand), and asking the trainer for one would make the fit loop
open the rollout stream before a resumed run's state is restored.
"""

from __future__ import annotations

import time
from typing import Any

from debate_lightning.training.online.datamodule import DebateRolloutDataModule
from debate_lightning.training.online.records import Rollout
from debate_lightning.training.policy import OptimConfig, PolicyConfig, PolicyModule


class OnlineObjectiveModule(PolicyModule):
    """A ``PolicyModule`` that learns from ``DebateRolloutDataModule`` rollouts.

    Logs, once per epoch, the rollout's stats (``rollout/judge_accuracy``, ``objective/scores``,
    ``val/contain_eos_token``, …) with ``time/rollout_s`` and ``time/train_s``.
    """

    min_candidates = 1  # speeches the DataModule must sample per turn
    candidate_reward = "immediate"  # how the DataModule scores candidates (``debater.play_rollout``)
    _temperature: float | None = None  # None: the rollout's sampling temperature

    def __init__(self, policy: PolicyConfig, optim: OptimConfig):
        if optim.scheduler != "constant":
            raise ValueError(f"optim.scheduler: {type(self).__name__} trains on rollouts of unknown number, so "
                             f"only 'constant' (after warmup_steps) works; got {optim.scheduler!r}")
        super().__init__(policy, optim)
        self._train_end: float | None = None

    def rollout_examples(self, rollout: Rollout) -> list[dict[str, Any]]:
        """This objective's training examples from one epoch's rollout."""
        raise NotImplementedError(f"{type(self).__name__} must define rollout_examples(rollout)")

    @property
    def rollout_sampling(self) -> Any:
        """The rollout DataModule's ``SamplingParams`` (None when not attached to one)."""
        try:
            dm = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer
            return None
        return getattr(dm, "sampling", None)

    @property
    def temperature(self) -> float:
        """The temperature log-probs are computed at: the rollout's sampling temperature unless set."""
        if self._temperature is not None:
            return self._temperature
        t = getattr(self.rollout_sampling, "temperature", 1.0)
        return t if t > 0 else 1.0

    def manual_step(self, loss: Any, batch_idx: int, max_grad_norm: float) -> None:
        """One optimizer step on ``loss`` under manual optimisation: a finite check, backward,
        clipping by norm (``max_grad_norm`` 0 = off), the optimizer and the warmup schedule."""
        opt, schedule = self.optimizers(), self.lr_schedulers()
        self.check_finite(loss, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        if max_grad_norm > 0:
            self.clip_gradients(opt, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        schedule.step()  # manual optimisation: Lightning does not step the warmup for us

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, DebateRolloutDataModule) and dm.num_candidates < self.min_candidates:
            raise ValueError(f"{type(self).__name__} compares candidate speeches: set data.num_candidates >= "
                             f"{self.min_candidates} (got {dm.num_candidates})")

    # -- per-epoch rollout metrics --------------------------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._train_end = time.perf_counter()  # callbacks' evaluations after it are not training time

    def on_train_epoch_end(self) -> None:
        self.log_rollout_metrics()

    def log_rollout_metrics(self) -> None:
        """Log the epoch's rollout stats and times (training time ends at the last step)."""
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, DebateRolloutDataModule):
            # already totals over the ranks, so equal on every rank: sync_dist averages equal values
            for key, value in dm.epoch_metrics(self._train_end).items():
                self.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
