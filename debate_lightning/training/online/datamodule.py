"""``DebateRolloutDataModule``: debates with the LIVE policy, played at the start of every epoch.

Online objectives close the loop: their training data is whatever the current policy says in
debates, judged by a frozen judge. The DataModule plays ``rounds_per_epoch`` rounds through the
batched engine (one generate call per turn for every round in flight) with the LightningModule's
own model, live adapters and all (``debater.play_rollout``), and hands the ``Rollout`` to the
module's ``rollout_examples(rollout)`` (the ``OnlineObjectiveModule`` contract, ``base.py``).

A training module works with this DataModule when it has ``policy`` (the causal LM),
``tokenizer`` and ``rollout_examples(rollout) -> list[dict]``; its ``candidate_reward``
(``immediate`` unless it says ``final``) is how candidate speeches are scored (``play_rollout``).

Randomness is counter-based: epoch ``e`` draws its questions, side orders and sampling seed from
``(seed, e)`` alone, in a forked torch RNG that leaves the training RNG untouched. So a run
resumed from a checkpoint (``state_dict`` holds the seed and the epoch) plays exactly the rounds
the uninterrupted run would have played with the same weights.

On N processes (DDP, FSDP) every rank plays a disjoint shard of the same epoch plan: rounds
``rank, rank + N, …`` (``shard``), so together the ranks play exactly the rounds one process would.
Each samples with the plan's seed plus its rank. The ranks then agree on one number of training
batches (the largest; a rank with fewer examples repeats its own, as ``DistributedSampler`` pads),
because DDP hangs when one rank stops stepping early. Rollout metrics are totals over the ranks
(means over all rounds; times are the slowest rank's). Each rank writes the rounds it played to
``<log_dir>/rollouts/epoch-EEEE-rank-R.jsonl`` in the tournament's ``rounds.jsonl`` format, so
``report`` and ``rejudge`` read them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from debate_lightning.data.config import DataConfig
from debate_lightning.data.question import Question, stable_id
from debate_lightning.debate.agents import Judge
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import Generator, LocalGenerator, SamplingParams
from debate_lightning.models.hf import live_generator
from debate_lightning.models.loading import auto_dtype, parse_dtype, resolve_device
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.training.distributed import shard
from debate_lightning.training.online.debater import POLICY, play_rollout
from debate_lightning.training.online.records import Rollout, stats_from_totals
from debate_lightning.training.policy import has_adapters
from debate_lightning.training.reference import initial_model_generator

ROLLOUTS_DIR = "rollouts"  # under the trainer's log_dir


def shuffle_rounds(examples: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The examples in a random order that keeps each round's (``example["round"]``) together.

    A round's debaters share its story, and a batch packs a shared prefix once
    (``pack(share_prefixes=True)``): kept together, a round's examples mostly land in one batch.
    """
    rounds: dict[Any, list[dict[str, Any]]] = {}
    for e in examples:
        rounds.setdefault(e.get("round"), []).append(e)
    order = list(rounds.values())
    rng.shuffle(order)
    for members in order:
        rng.shuffle(members)
    return [e for members in order for e in members]


class _EpochStream(IterableDataset):
    """Plays the epoch's rollout when iterated (once per epoch) and yields its examples shuffled."""

    def __init__(self, datamodule: DebateRolloutDataModule):
        self.dm = datamodule

    def __iter__(self):
        examples = self.dm.next_examples()
        yield from examples


class DebateRolloutDataModule(pl.LightningDataModule):
    """Fresh debate rounds from the current policy at the start of every training epoch.

    Args:
        questions: where the questions come from (``split: train``); every epoch samples
            ``rounds_per_epoch`` of them, each in a random side order.
        format: the round format (``debate``, ``consultancy``, …). For consultancy the
            consultant's side is drawn per round, so it argues for the wrong answer half the time.
        rounds_per_epoch: rounds played per epoch (all in flight together: one batched call per turn).
        num_candidates: speeches sampled per turn. With 2 or more, the judge scores each and the
            best continues the round; online DPO needs at least 2, PPO usually uses 1.
        sampling: sampling parameters of the policy's speeches (``stop`` is not supported).
        judge: the frozen judge model (default: the embedded model in float32).
        judge_from_policy: judge with the policy's own base weights (adapters off) instead of
            loading ``judge``: the same frozen model at no extra memory (on N processes, no extra
            copy per rank). ``auto``: do so when ``judge`` is that model (an ``hf`` spec of the
            policy's path and dtype, no adapter) and the policy has adapters to switch off.
        judge_both_orders: judge every transcript in both answer orders (cancels position bias).
        judge_generator: any ``Generator`` as judge (overrides ``judge``; e.g. an API model).
        batch_size: examples per training step (pairs for DPO; trajectories for PPO's rollout batch).
        max_batch_size: most sequences per generate/score call.
        seed: rollout seed; epoch e uses (seed, e).
        save_rollouts: write each epoch's rounds (per rank) to ``<log_dir>/rollouts/`` as JSONL.
    """

    def __init__(
        self,
        questions: DataConfig = DataConfig(split="train", limit=None, both_orders=False),
        format: Format = Format(kind="debate", num_speeches=1),
        rounds_per_epoch: int = 8,
        num_candidates: int = 2,
        sampling: SamplingParams = SamplingParams(max_new_tokens=48, temperature=1.0),
        judge: ModelSpec = ModelSpec(path="embedded", dtype="float32"),
        judge_from_policy: bool | Literal["auto"] = False,
        judge_both_orders: bool = True,
        judge_generator: Generator | None = None,
        batch_size: int = 4,
        max_batch_size: int = 32,
        seed: int = 0,
        save_rollouts: bool = True,
    ):
        super().__init__()
        if rounds_per_epoch < 1:
            raise ValueError(f"rounds_per_epoch must be >= 1, got {rounds_per_epoch}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if sampling.stop:
            raise ValueError("sampling.stop is not supported in rollouts: training needs the exact sampled tokens")
        self.questions_config, self.format = questions, format
        self.rounds_per_epoch, self.num_candidates = rounds_per_epoch, num_candidates
        self.sampling, self.judge_spec = sampling, judge
        self.judge_from_policy, self.judge_both_orders = judge_from_policy, judge_both_orders
        self.batch_size, self.max_batch_size, self.seed = batch_size, max_batch_size, seed
        self.save_rollouts = save_rollouts
        self._judge_generator = judge_generator
        self._pool: list[Question] | None = None
        self.epoch = 0  # the next epoch to play
        self.last_rollout: Rollout | None = None
        self.last_examples: list[dict[str, Any]] = []  # this rank's, before padding to equal batches
        self.rollout_end: float | None = None
        self.history: list[dict[str, float]] = []  # per-epoch rollout stats

    # -- pieces -------------------------------------------------------------------------------
    def pool(self) -> list[Question]:
        if self._pool is None:
            d = self.questions_config
            self._pool = d.load()
            if not self._pool:
                raise ValueError(f"questions: source {d.source!r} split {d.split!r} gave no questions")
        return self._pool

    def judges_from_policy(self, module: pl.LightningModule) -> bool:
        """Whether the policy's base weights judge (``judge_from_policy``, ``auto`` resolved)."""
        if self.judge_from_policy != "auto":
            return bool(self.judge_from_policy)
        spec, config = self.judge_spec, getattr(module, "policy_config", None)
        if config is None or spec.backend != "hf" or spec.adapter or not has_adapters(module.policy):
            return False
        dtype = spec.dtype if spec.dtype != "auto" else auto_dtype(resolve_device(spec.device))
        return spec.path == config.model and parse_dtype(dtype) == next(module.policy.parameters()).dtype

    def judge(self, module: pl.LightningModule) -> Judge:
        if self._judge_generator is None:
            if self.judges_from_policy(module):
                self._judge_generator = initial_model_generator(module.policy, module.tokenizer, "judge",
                                                                self.max_batch_size)
            else:
                self._judge_generator = build_generator(self.judge_spec, name="judge")
        return Judge(self._judge_generator, both_orders=self.judge_both_orders, name="judge")

    def policy_generator(self, module: pl.LightningModule) -> LocalGenerator:
        """The module's live policy as a generator (its caches last one call: weights change between)."""
        return live_generator(module.policy, module.tokenizer, POLICY, self.max_batch_size)

    def epoch_plan(self, epoch: int) -> tuple[list[Question], list[Format], int]:
        """The questions, formats and sampling seed of ``epoch``: a function of (seed, epoch) only."""
        rng = random.Random(stable_id("rollout", self.seed, epoch))
        pool = self.pool()
        if self.rounds_per_epoch <= len(pool):
            picked = rng.sample(pool, self.rounds_per_epoch)
        else:
            picked = [rng.choice(pool) for _ in range(self.rounds_per_epoch)]
        questions = [q.swapped() if rng.random() < 0.5 else q for q in picked]
        fmts = [dataclasses.replace(self.format, consultant_side=rng.randrange(2))
                if self.format.kind == "consultancy" else self.format for _ in questions]
        return questions, fmts, rng.randrange(2**31)

    def shard(self, epoch: int, rank: int = 0, world_size: int = 1) -> tuple[list[Question], list[Format], int]:
        """Rank ``rank``'s part of ``epoch``'s plan: rounds ``rank, rank + world_size, …`` and the
        plan's sampling seed plus ``rank``. The shards of all ranks are the plan, each round once."""
        questions, fmts, sample_seed = self.epoch_plan(epoch)
        return shard(questions, rank, world_size), shard(fmts, rank, world_size), sample_seed + rank

    def play(self, module: pl.LightningModule, epoch: int, rank: int = 0, world_size: int = 1) -> Rollout:
        """Play rank ``rank``'s shard of ``epoch``'s rounds with ``module.policy`` (no grad, dropout off)."""
        questions, fmts, sample_seed = self.shard(epoch, rank, world_size)
        with torch.random.fork_rng(devices=[]):  # rollouts neither use nor move the training RNG
            torch.manual_seed(sample_seed)
            rollout = play_rollout(questions, fmts, self.policy_generator(module), self.judge(module),
                                   dataclasses.replace(self.sampling, seed=None), self.num_candidates, epoch, self.seed,
                                   getattr(module, "candidate_reward", "immediate"))
        rollout.seed = sample_seed
        return rollout

    def next_examples(self) -> list[dict[str, Any]]:
        """Play this epoch's rollout and return the module's examples, shuffled by round."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("DebateRolloutDataModule needs a Trainer: it plays with trainer.lightning_module")
        module = trainer.lightning_module
        rank, world = trainer.global_rank, trainer.world_size
        if self.rounds_per_epoch < world:
            raise ValueError(f"data.rounds_per_epoch ({self.rounds_per_epoch}) is less than the number of processes "
                             f"({world}): every rank plays a share of the epoch's rounds, so give at least one each")
        for attr in ("policy", "tokenizer", "rollout_examples"):
            if not hasattr(module, attr):
                raise TypeError(f"{type(module).__name__} cannot train from rollouts: it has no {attr!r} "
                                "(use OnlineDPOModule or PPOModule)")
        # The fit loop creates the epoch's iterator before it updates ``current_epoch`` on a
        # resume; the count of processed epochs is right both then and in a fresh run.
        epoch = trainer.fit_loop.epoch_progress.current.processed
        rollout = self.play(module, epoch, rank, world)
        examples = module.rollout_examples(rollout)
        examples = shuffle_rounds(examples, random.Random(stable_id("shuffle", self.seed, epoch,
                                                                   *([rank] if world > 1 else []))))
        self.last_rollout, self.last_examples, self.epoch = rollout, examples, epoch + 1
        if self.save_rollouts:
            self._save(rollout, rank)
        self.rollout_end = time.perf_counter()
        stats = {**rollout.stats(), "rollout/examples": float(len(examples)), "epoch": float(epoch)}
        self.history.append(stats)
        where = f" (rank 0 of {world})" if world > 1 else ""
        rank_zero_info(f"epoch {epoch} rollout{where}: {len(rollout.results)} rounds, {len(rollout.samples)} speeches, "
                       f"{len(examples)} examples, judge accuracy {stats['rollout/judge_accuracy']:.2f}, "
                       f"{rollout.seconds:.1f} s")
        return self._equal_batches(examples, epoch)

    def _equal_batches(self, examples: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
        """This rank's examples, padded by repeating them to the batches of the rank with most."""
        trainer = self.trainer
        counts = [len(examples)]
        if trainer.world_size > 1:
            mine = torch.tensor([len(examples)], device=trainer.strategy.root_device)
            counts = [int(c) for c in trainer.strategy.all_gather(mine).flatten().tolist()]
        if min(counts) == 0:
            warnings.warn(f"epoch {epoch}: the rollout gave no training examples "
                          + (f"on rank(s) {[r for r, c in enumerate(counts) if c == 0]} " if len(counts) > 1 else "")
                          + "(ties, no verdicts, or num_candidates < 2 for preference pairs); the epoch trains on "
                          "nothing" + (" on any rank, so that the ranks step together" if len(counts) > 1 else ""))
            return []
        if len(counts) == 1:
            return examples
        size = max(-(-c // self.batch_size) for c in counts) * self.batch_size
        return [examples[i % len(examples)] for i in range(size)]

    def _save(self, rollout: Rollout, rank: int) -> None:
        trainer = self.trainer
        out = Path(trainer.log_dir or trainer.default_root_dir) / ROLLOUTS_DIR
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"epoch-{rollout.epoch:04d}-rank-{rank}.jsonl"
        path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rollout.results))

    def epoch_metrics(self, train_end: float | None = None) -> dict[str, float]:
        """Rollout stats of this epoch plus ``time/rollout_s`` and ``time/train_s``.

        ``train_end`` is when the epoch's last training step ended (default: now); evaluation
        callbacks that run after it are not training time.
        """
        if self.last_rollout is None:
            return {}
        totals = {**self.last_rollout.totals(), "rollout/examples": (float(len(self.last_examples)), 1.0)}
        start = self.rollout_end or time.perf_counter()
        end = train_end if train_end is not None and train_end >= start else time.perf_counter()
        times = [self.last_rollout.seconds, end - start]
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:  # totals over ranks, times of the slowest
            keys = sorted(totals)
            mine = torch.tensor([[*totals[k]] for k in keys] + [times], dtype=torch.float64,
                                device=trainer.strategy.root_device)
            every = trainer.strategy.all_gather(mine).cpu()  # [world, keys + 1, 2]
            totals = {k: (float(every[:, i, 0].sum()), float(every[:, i, 1].sum())) for i, k in enumerate(keys)}
            times = every[:, -1].amax(dim=0).tolist()
        out = {k: v for k, v in stats_from_totals(totals).items() if not math.isnan(v)}
        out["rollout/seconds"] = out["time/rollout_s"] = times[0]
        out["time/train_s"] = times[1]
        return out

    # -- Lightning ----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        # num_workers must be 0: the stream plays debates with the model in this process.
        return DataLoader(_EpochStream(self), batch_size=self.batch_size, collate_fn=list, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(f"rollout seed {self.seed} differs from the checkpoint's {state['seed']}; "
                          "resuming with the checkpoint's seed")
        self.seed, self.epoch = int(state.get("seed", self.seed)), int(state.get("epoch", 0))
        if self.last_rollout is not None and self.last_rollout.epoch != self.epoch:
            warnings.warn(f"a rollout (epoch {self.last_rollout.epoch}) was played before the checkpoint was "
                          f"restored (epoch {self.epoch} is next): something asked the trainer for the number "
                          "of training batches early (e.g. a scheduler using estimated_stepping_batches), so "
                          "the resumed run will not replay the uninterrupted one exactly")
