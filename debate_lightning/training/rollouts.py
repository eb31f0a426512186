"""Debate rollouts with the LIVE policy, played at the start of every training epoch.

Online DPO and PPO close the loop: their training data is whatever the current policy says in
debates, judged by a frozen judge. ``DebateRolloutDataModule`` plays ``rounds_per_epoch`` rounds
through the batched engine (one generate call per turn for every round in flight) with the
LightningModule's own model, live adapters and all, under ``eval_mode`` (no grad, dropout off).
Every speech is sampled ``num_candidates`` times; with two or more, each candidate is scored by
the judge (P(own side) with that speech appended) and the best one continues the round
(best-of-N). The LightningModule turns the resulting ``Rollout`` into its own examples through
``rollout_examples(rollout)``: preference pairs for online DPO (``preference_pairs``),
trajectories with rewards for PPO (``trajectories``).

A training module works with this DataModule when it has ``policy`` (the causal LM),
``tokenizer`` and ``rollout_examples(rollout) -> list[dict]``.

Randomness is counter-based: epoch ``e`` draws its questions, side orders and sampling seed from
``(seed, e)`` alone, in a forked torch RNG that leaves the training RNG untouched. So a run
resumed from a checkpoint (``state_dict`` holds the seed and the epoch) plays exactly the rounds
the uninterrupted run would have played with the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from debate_lightning.data.question import Question, stable_id
from debate_lightning.debate.agents import Debater, Judge, SpeechRequest
from debate_lightning.debate.engine import RoundResult, RoundSpec, judge_transcripts, play_speeches
from debate_lightning.debate.formats import Format
from debate_lightning.debate.quotes import QuoteChecker
from debate_lightning.debate.transcript import Speech, Transcript
from debate_lightning.models.base import Generator, SamplingParams
from debate_lightning.models.hf import HFGenerator
from debate_lightning.models.registry import ModelSpec, build_generator
from debate_lightning.tournament.config import DataConfig
from debate_lightning.training.policy import adapters_disabled, has_adapters

POLICY = "policy"


# -- generators over the live policy ---------------------------------------------------------
@contextlib.contextmanager
def kv_cache_on(model: torch.nn.Module) -> Iterator[None]:
    """Generation with the KV cache even though training turned ``config.use_cache`` off."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if config is not None:
        config.use_cache = True
    try:
        yield
    finally:
        if config is not None:
            config.use_cache = old


class PolicyGenerator(HFGenerator):
    """``HFGenerator`` over a live training model (generation with the KV cache on)."""

    def generate_ids(self, prompts, params, *args, **kwargs):
        with kv_cache_on(self.model):
            return super().generate_ids(prompts, params, *args, **kwargs)


class BaseModelGenerator(PolicyGenerator):
    """The live policy with its adapters switched off: the initial model without a second copy."""

    _depth = 0

    @contextlib.contextmanager
    def _base(self) -> Iterator[None]:
        # choice_logprobs may fall back to score_ids: PEFT's disable_adapter must not nest.
        if self._depth:
            yield
            return
        self._depth += 1
        try:
            with adapters_disabled(self.model):
                yield
        finally:
            self._depth -= 1

    def generate_ids(self, prompts, params, *args, **kwargs):
        with self._base():
            return super().generate_ids(prompts, params, *args, **kwargs)

    def score_ids(self, prompts, continuations):
        with self._base():
            return super().score_ids(prompts, continuations)

    def choice_logprobs(self, chats, choices):
        with self._base():
            return super().choice_logprobs(chats, choices)


def initial_model_generator(policy: torch.nn.Module, tokenizer: Any, name: str, max_batch_size: int = 32) -> Generator:
    """The policy as it was before training: adapters off (PEFT), else a frozen copy made now."""
    if has_adapters(policy):
        return BaseModelGenerator(model=policy, tokenizer=tokenizer, name=name, max_batch_size=max_batch_size)
    frozen = copy.deepcopy(policy).eval().requires_grad_(False)
    return PolicyGenerator(model=frozen, tokenizer=tokenizer, name=name, max_batch_size=max_batch_size)


# -- rollout records -------------------------------------------------------------------------
@dataclass
class Candidate:
    """One sampled speech: exactly the tokens the policy produced (plus EOS when it stopped)."""

    response_ids: list[int]
    text: str
    finished: bool
    score: float | None = None  # judge P(own side) with this speech appended (best-of-N only)


@dataclass
class SpeechSample:
    """Every candidate for one speech of one round, and which one the round continued with."""

    round_index: int
    side: int
    step: int
    speech_number: int  # 1 = the side's opening speech
    prompt_ids: list[int]
    candidates: list[Candidate]
    chosen: int = 0


@dataclass
class Rollout:
    """The rounds of one epoch: judged results plus every sampled speech."""

    epoch: int
    results: list[RoundResult]
    samples: list[SpeechSample]
    seconds: float = 0.0
    seed: int = 0

    def p_side(self, round_index: int, side: int) -> float | None:
        """The final judge's probability for ``side`` in a round (None when it gave no verdict)."""
        p_a = self.results[round_index].p_a
        if p_a is None or not self.results[round_index].ok:
            return None
        return p_a if side == 0 else 1.0 - p_a

    def is_correct_side(self, round_index: int, side: int) -> bool:
        return self.results[round_index].correct_index == side

    def stats(self) -> dict[str, float]:
        judged = [r for r in self.results if r.ok and r.p_a is not None]
        cands = [c for s in self.samples for c in s.candidates]
        out = {
            "rollout/rounds": float(len(self.results)),
            "rollout/speeches": float(len(self.samples)),
            "rollout/seconds": self.seconds,
            "rollout/judge_accuracy": _mean([float(bool(r.judge_correct)) for r in judged]),
            "rollout/judge_p_correct": _mean([_p_correct(r) for r in judged]),
            "rollout/response_tokens": _mean([float(len(c.response_ids)) for c in cands]),
            "val/contain_eos_token": _mean([float(c.finished) for c in cands]),
        }
        scored = [c.score for c in cands if c.score is not None and not math.isnan(c.score)]
        if scored:
            out["objective/scores"] = _mean(scored)
        return out


def _p_correct(r: RoundResult) -> float:
    assert r.p_a is not None
    return r.p_a if r.correct_index == 0 else 1.0 - r.p_a


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


# -- examples ----------------------------------------------------------------------------------
def preference_pairs(
    rollout: Rollout, missing_eos_penalty: float = 0.0, opening_only: bool = False, min_margin: float = 0.0
) -> list[dict[str, Any]]:
    """One pair per speech: the judge's best candidate against its worst.

    Scores are the judge's P(own side) after the candidate, minus ``missing_eos_penalty`` for a
    candidate that hit ``max_new_tokens`` without ending (as TRL's online DPO does). Pairs whose
    score gap is ``<= min_margin`` are dropped (no preference to learn). ``preference`` is the
    soft label ``(1 + s_chosen − s_rejected) / 2`` in [0.5, 1] for the ``bon`` losses.
    """
    pairs = []
    for s in rollout.samples:
        if opening_only and s.speech_number != 1:
            continue
        scored = [(c.score - (0.0 if c.finished else missing_eos_penalty), c) for c in s.candidates
                  if c.score is not None and not math.isnan(c.score) and c.response_ids]
        if len(scored) < 2:
            continue
        (best_score, best), (worst_score, worst) = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
        margin = best_score - worst_score
        if margin <= min_margin:
            continue
        pairs.append({
            "prompt_ids": s.prompt_ids,
            "chosen_ids": best.response_ids,
            "rejected_ids": worst.response_ids,
            "preference": min(1.0, max(0.5, 0.5 * (1.0 + margin))),
            "chosen_score": best_score,
            "rejected_score": worst_score,
            "speech_number": s.speech_number,
        })
    return pairs


def trajectories(
    rollout: Rollout,
    baseline: str = "constant",
    baseline_value: float = 0.5,
    correctness_weight: float = 0.0,
    opening_only: bool = False,
) -> list[dict[str, Any]]:
    """One trajectory per played speech, rewarded with the final judge's P(own side).

    ``reward = P(own side) − b + w·(+1 if the side argues the correct answer else −1)`` where
    ``b`` is ``baseline_value`` (``constant``; 0.5 makes a coin-flip verdict worth 0), the mean
    score of the rollout (``batch_mean``) or 0 (``none``), and ``w`` is ``correctness_weight``.
    ``score`` keeps the unshaped P(own side) for logging (TRL's ``objective/scores``).
    """
    if baseline not in ("none", "constant", "batch_mean"):
        raise ValueError(f"baseline must be 'none', 'constant' or 'batch_mean', got {baseline!r}")
    out = []
    for s in rollout.samples:
        p = rollout.p_side(s.round_index, s.side)
        cand = s.candidates[s.chosen]
        if p is None or not cand.response_ids or (opening_only and s.speech_number != 1):
            continue
        sign = 1.0 if rollout.is_correct_side(s.round_index, s.side) else -1.0
        out.append({"prompt_ids": s.prompt_ids, "response_ids": cand.response_ids, "score": p,
                    "reward": p + correctness_weight * sign, "finished": cand.finished,
                    "speech_number": s.speech_number})
    b = {"none": 0.0, "constant": baseline_value}.get(baseline)
    if b is None:
        b = _mean([t["score"] for t in out]) if out else 0.0
    for t in out:
        t["reward"] -= b
    return out


# -- the debater that records what it sampled --------------------------------------------------
@dataclass
class RolloutDebater(Debater):
    """Samples ``n`` candidates per speech in one call; with a judge keeps the best (best-of-N).

    Unlike ``BestOfNDebater`` it records token ids (what the policy really sampled) and whether
    each candidate ended by itself, which training needs.
    """

    n: int = 2
    judge: Judge | None = None
    samples: list[SpeechSample] = field(default_factory=list)
    round_of: dict[int, int] = field(default_factory=dict)  # id(transcript) -> round index

    def speak(self, requests: Sequence[SpeechRequest]) -> list[Speech]:
        if not requests:
            return []
        gen = self.generator
        assert isinstance(gen, HFGenerator), "rollouts need a local model (token ids)"
        chats = self.chats(requests)
        prompts = [gen.prompt_ids(c) for c in chats]
        # the story sits in the system message: its KV is computed once per story, not per sample
        prefix = [gen.system_prefix_len(c, p) for c, p in zip(chats, prompts)] if gen.prefixes is not None else None
        start = time.perf_counter()
        gens = gen.generate_ids([p for p in prompts for _ in range(self.n)], self.params,
                                [n for n in prefix for _ in range(self.n)] if prefix else None)
        per = (time.perf_counter() - start) / len(gens)
        eos = gen.tokenizer.eos_token_id
        flat_reqs = [r for r in requests for _ in range(self.n)]
        speeches = []
        for r, g in zip(flat_reqs, gens):
            checker = QuoteChecker(r.transcript.question.story)
            speeches.append(Speech(side=r.side, step=r.step, text=g.text, quotes=checker.check_speech(g.text),
                                   num_tokens=g.num_tokens, finished=g.finished, seconds=per))
        scores: list[float | None] = [None] * len(gens)
        if self.n > 1 and self.judge is not None:
            p_a = self.judge.p_a([r.transcript.with_speech(s) for r, s in zip(flat_reqs, speeches)])
            scores = [p if r.side == 0 else 1.0 - p for r, p in zip(flat_reqs, p_a)]
        out = []
        for i, req in enumerate(requests):
            group = range(i * self.n, (i + 1) * self.n)
            cands = [Candidate(list(gens[j].token_ids or []) + ([eos] if gens[j].finished else []), gens[j].text,
                               gens[j].finished, scores[j]) for j in group]
            ranked = [(-1.0 if c.score is None or math.isnan(c.score) else c.score) for c in cands]
            best = max(range(len(cands)), key=lambda k: ranked[k])
            speech = speeches[group[best]]
            if self.n > 1:
                speech.candidates = [{"text": c.text, "score": c.score, "chosen": k == best,
                                      "num_tokens": len(c.response_ids), "finished": c.finished}
                                     for k, c in enumerate(cands)]
            own = sum(1 for s in req.transcript.speeches if s.side == req.side)
            self.samples.append(SpeechSample(self.round_of.get(id(req.transcript), -1), req.side, req.step, own + 1,
                                             prompts[i], cands, best))
            out.append(speech)
        return out


def play_rollout(
    questions: Sequence[Question],
    fmt: Format,
    generator: HFGenerator,
    judge: Judge,
    params: SamplingParams,
    num_candidates: int = 2,
    epoch: int = 0,
    seed: int = 0,
) -> Rollout:
    """Play one round per question (formats may differ per question: ``fmt`` or a list)."""
    fmts = list(fmt) if isinstance(fmt, (list, tuple)) else [fmt] * len(questions)
    specs = [RoundSpec(q, f, (POLICY, POLICY) if f.kind != "consultancy" else
                       ((POLICY, "") if f.consultant_side == 0 else ("", POLICY)), repeat=epoch)
             for q, f in zip(questions, fmts)]
    transcripts = [Transcript(s.question, s.format) for s in specs]
    debater = RolloutDebater(POLICY, generator, params, n=num_candidates, judge=judge,
                             round_of={id(t): i for i, t in enumerate(transcripts)})
    start = time.perf_counter()
    play_speeches(specs, {POLICY: debater}, transcripts)
    results = judge_transcripts(specs, transcripts, judge)
    return Rollout(epoch, results, debater.samples, time.perf_counter() - start, seed)


# -- the DataModule ------------------------------------------------------------------------------
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
            loading ``judge``: the same frozen model at no extra memory.
        judge_both_orders: judge every transcript in both answer orders (cancels position bias).
        judge_generator: any ``Generator`` as judge (overrides ``judge``; e.g. an API model).
        batch_size: examples per training step (pairs for DPO; trajectories for PPO's rollout batch).
        max_batch_size: most sequences per generate/score call.
        seed: rollout seed; epoch e uses (seed, e).
    """

    def __init__(
        self,
        questions: DataConfig = DataConfig(split="train", limit=None, both_orders=False),
        format: Format = Format(kind="debate", num_speeches=1),
        rounds_per_epoch: int = 8,
        num_candidates: int = 2,
        sampling: SamplingParams = SamplingParams(max_new_tokens=48, temperature=1.0),
        judge: ModelSpec = ModelSpec(path="embedded", dtype="float32"),
        judge_from_policy: bool = False,
        judge_both_orders: bool = True,
        judge_generator: Generator | None = None,
        batch_size: int = 4,
        max_batch_size: int = 32,
        seed: int = 0,
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
        self._judge_generator = judge_generator
        self._pool: list[Question] | None = None
        self.epoch = 0  # the next epoch to play
        self.last_rollout: Rollout | None = None
        self.last_examples: list[dict[str, Any]] = []
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

    def judge(self, module: pl.LightningModule) -> Judge:
        if self._judge_generator is None:
            if self.judge_from_policy:
                self._judge_generator = initial_model_generator(module.policy, module.tokenizer, "judge",
                                                                self.max_batch_size)
            else:
                self._judge_generator = build_generator(self.judge_spec, name="judge")
        return Judge(self._judge_generator, both_orders=self.judge_both_orders, name="judge")

    def policy_generator(self, module: pl.LightningModule) -> PolicyGenerator:
        return PolicyGenerator(model=module.policy, tokenizer=module.tokenizer, name=POLICY,
                               max_batch_size=self.max_batch_size)

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

    def play(self, module: pl.LightningModule, epoch: int) -> Rollout:
        """Play ``epoch``'s rounds with ``module.policy`` (no grad, dropout off)."""
        questions, fmts, sample_seed = self.epoch_plan(epoch)
        with torch.random.fork_rng(devices=[]):  # rollouts neither use nor move the training RNG
            torch.manual_seed(sample_seed)
            rollout = play_rollout(questions, fmts, self.policy_generator(module), self.judge(module),
                                   dataclasses.replace(self.sampling, seed=None), self.num_candidates, epoch, self.seed)
        rollout.seed = sample_seed
        return rollout

    def next_examples(self) -> list[dict[str, Any]]:
        """Play this epoch's rollout and return the module's examples, shuffled."""
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("DebateRolloutDataModule needs a Trainer: it plays with trainer.lightning_module")
        module = trainer.lightning_module
        if trainer.world_size > 1:
            # Ranks would play identical rounds, and a rank with fewer examples would hang DDP.
            raise NotImplementedError("DebateRolloutDataModule runs on one process for now (devices: 1); "
                                      "multi-process rollouts need per-rank questions and equal batch counts")
        for attr in ("policy", "tokenizer", "rollout_examples"):
            if not hasattr(module, attr):
                raise TypeError(f"{type(module).__name__} cannot train from rollouts: it has no {attr!r} "
                                "(use OnlineDPOModule or PPOModule)")
        # The fit loop creates the epoch's iterator before it updates ``current_epoch`` on a
        # resume; the count of processed epochs is right both then and in a fresh run.
        epoch = trainer.fit_loop.epoch_progress.current.processed
        rollout = self.play(module, epoch)
        examples = module.rollout_examples(rollout)
        random.Random(stable_id("shuffle", self.seed, epoch)).shuffle(examples)
        self.last_rollout, self.last_examples, self.epoch = rollout, examples, epoch + 1
        self.rollout_end = time.perf_counter()
        stats = {**rollout.stats(), "rollout/examples": float(len(examples)), "epoch": float(epoch)}
        self.history.append(stats)
        rank_zero_info(f"epoch {epoch} rollout: {len(rollout.results)} rounds, {len(rollout.samples)} speeches, "
                       f"{len(examples)} examples, judge accuracy {stats['rollout/judge_accuracy']:.2f}, "
                       f"{rollout.seconds:.1f} s")
        if not examples:
            import warnings

            warnings.warn(f"epoch {epoch}: the rollout gave no training examples (ties, no verdicts, or "
                          "num_candidates < 2 for preference pairs); the epoch trains on nothing")
        return examples

    def epoch_metrics(self, train_end: float | None = None) -> dict[str, float]:
        """Rollout stats of this epoch plus ``time/rollout_s`` and ``time/train_s``.

        ``train_end`` is when the epoch's last training step ended (default: now); evaluation
        callbacks that run after it are not training time.
        """
        if self.last_rollout is None:
            return {}
        out = {k: v for k, v in self.history[-1].items() if k != "epoch" and not math.isnan(v)}
        out["time/rollout_s"] = self.last_rollout.seconds
        start = self.rollout_end or time.perf_counter()
        end = train_end if train_end is not None and train_end >= start else time.perf_counter()
        out["time/train_s"] = end - start
        return out

    # -- Lightning ----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        # num_workers must be 0: the stream plays debates with the model in this process.
        return DataLoader(_EpochStream(self), batch_size=self.batch_size, collate_fn=list, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            import warnings

            warnings.warn(f"rollout seed {self.seed} differs from the checkpoint's {state['seed']}; "
                          "resuming with the checkpoint's seed")
        self.seed, self.epoch = int(state.get("seed", self.seed)), int(state.get("epoch", 0))
        if self.last_rollout is not None and self.last_rollout.epoch != self.epoch:
            import warnings

            warnings.warn(f"a rollout (epoch {self.last_rollout.epoch}) was played before the checkpoint was "
                          f"restored (epoch {self.epoch} is next): something asked the trainer for the number "
                          "of training batches early (e.g. a scheduler using estimated_stepping_batches), so "
                          "the resumed run will not replay the uninterrupted one exactly")


def log_rollout_metrics(module: pl.LightningModule, train_end: float | None = None) -> None:
    """Log the epoch's rollout stats and times from a module's ``on_train_epoch_end``.

    ``train_end``: when the last training step of the epoch ended (``time.perf_counter()``).
    """
    dm = getattr(module.trainer, "datamodule", None)
    if isinstance(dm, DebateRolloutDataModule):
        for key, value in dm.epoch_metrics(train_end).items():
            module.log(key, value, on_step=False, on_epoch=True)
