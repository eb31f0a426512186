"""DataModules for DPO (preference pairs) and SFT (debate speeches, or a judge's verdicts).

Both tokenise once in ``setup`` with the policy's own tokenizer (taken from the LightningModule,
so the model is named once in a config) and batch through :class:`ResumableLoader`, whose order
depends only on (seed, epoch) and which records how many batches it has served, so
``fit --ckpt_path last`` resumes mid-epoch at the exact next batch. It shards across DDP ranks
itself (every rank gets the same number of batches, padding by repetition like
``DistributedSampler``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from debate_lightning.data.preferences import PreferencePair, read_preferences
from debate_lightning.data.question import DataError, iter_jsonl
from debate_lightning.training.policy import completion_ids, pack, prompt_ids

Chat = list[dict[str, str]]
log = logging.getLogger(__name__)


class ResumableLoader:
    """Batches of ``items`` in an order fixed by (seed, epoch), resumable mid-epoch.

    Lightning saves ``state_dict()`` in checkpoints (it is a stateful iterable) and calls
    ``load_state_dict`` on resume; the next iteration then skips the batches already consumed.
    """

    def __init__(self, items: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any],
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 epoch_fn: Callable[[], int] | None = None, consumed_fn: Callable[[], int] | None = None,
                 rank: int = 0, world_size: int = 1):
        self.items, self.batch_size, self.collate = items, batch_size, collate
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch_fn, self.consumed_fn, self.rank, self.world_size = epoch_fn, consumed_fn, rank, world_size
        self._epoch, self._next_epoch, self._served, self._skip = -1, 0, 0, 0

    def _indices(self, epoch: int) -> list[int]:
        n = len(self.items)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        per_rank = -(-n // self.world_size)
        order += order[: per_rank * self.world_size - n]  # equal shards, as DistributedSampler pads
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = -(-len(self.items) // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch_fn() if self.epoch_fn else self._next_epoch
        skip, self._skip = (self._skip if epoch == self._epoch else 0), 0
        self._epoch, self._served, self._next_epoch = epoch, skip, epoch + 1
        idx = self._indices(epoch)
        for b in range(skip, len(self)):
            chunk = idx[b * self.batch_size : (b + 1) * self.batch_size]
            self._served = b + 1
            yield self.collate([self.items[i] for i in chunk])

    def state_dict(self) -> dict[str, int]:
        # The trainer prefetches a batch ahead, so "served" overcounts; it knows what it consumed.
        consumed = self.consumed_fn() if self.consumed_fn else self._served
        return {"epoch": self._epoch, "batches": consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch, self._skip = state["epoch"], state["batches"]


SYNTHETIC = "synthetic:"


def synthetic_pairs(n: int, seed: int = 0, split: str = "train") -> list[PreferencePair]:
    """``n`` example pairs on built-in synthetic stories (``train: synthetic:N`` in a config).

    The debater for the correct answer speaks; ``chosen`` quotes the sentence of the story that
    settles the question and argues from it, ``rejected`` asserts the answer without evidence.
    For smoke runs and benchmarks on a laptop; real data comes from tournaments.
    """
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Transcript

    fmt = Format()
    pairs: list[PreferencePair] = []
    for q in _synthetic_questions(n, seed, split):
        side = q.correct_index
        chosen, rejected = _synthetic_speeches(q, side)
        chat = Transcript(q, fmt).debater_chat(side, prompts_for(fmt))
        pairs.append(PreferencePair(prompt=chat, chosen=chosen, rejected=rejected, preference=1.0,
                                    meta={"question": q.uid, "source": "synthetic"}))
    return pairs


def _synthetic_questions(n: int, seed: int, split: str) -> list[Any]:
    from debate_lightning.data.synthetic import generate

    stories = 1
    while True:
        questions = generate(stories, seed=seed, split=split)
        if len(questions) >= n or stories > 10 * n:
            return questions[:n]
        stories *= 2


def _synthetic_speeches(q: Any, side: int) -> tuple[str, str]:
    """(a speech for ``positions[side]`` that quotes the story, one that only asserts it)."""
    import re

    answer = q.positions[side]
    sentences = re.split(r"(?<=[.!?])\s+", q.story)
    evidence = next((x for x in sentences if answer.lower() in x.lower()), sentences[0])
    other = [x for x in sentences if x != evidence]
    filler = " ".join(other[2:4])
    quoted = (f"The answer is {answer}. The story says <quote>{evidence}</quote> "
              f"This settles it: {answer} is stated directly. {' '.join(other[:2])} Nothing in the story "
              f"supports {q.positions[1 - side]}, so the judge should choose {answer}.")
    bare = (f"I think the answer is probably {answer}, because that seems most likely to me. "
            f"{filler} None of this says much either way, but my instinct says {answer}, and the judge "
            f"should trust my instinct over my opponent's.")
    return quoted, bare


def synthetic_transcripts(n: int, seed: int = 0, split: str = "train") -> list[Any]:
    """``n`` one-speech-per-side debates on built-in synthetic stories (judge SFT's ``synthetic:N``):
    the correct side quotes the story, the other only asserts its answer; quotes are checked."""
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.quotes import QuoteChecker
    from debate_lightning.debate.transcript import Speech, Transcript

    fmt = Format(num_speeches=1)
    out = []
    for q in _synthetic_questions(n, seed, split):
        checker = QuoteChecker(q.story)
        texts = [_synthetic_speeches(q, side)[0 if side == q.correct_index else 1] for side in (0, 1)]
        speeches = [Speech(side=side, step=side, text=t, quotes=checker.check_speech(t)) for side, t in enumerate(texts)]
        out.append(Transcript(q, fmt, speeches))
    return out


def load_pairs(path: str) -> list[PreferencePair]:
    """Pairs from a JSONL file, or ``synthetic:N`` built-in example pairs."""
    if path.startswith(SYNTHETIC):
        return synthetic_pairs(int(path[len(SYNTHETIC):]))
    if not Path(path).is_file():
        raise FileNotFoundError(f"preference file {path} does not exist (data.train / data.val)")
    return read_preferences(path)


def _key(*parts: Sequence[int]) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(json.dumps(list(p)).encode())
    return h.hexdigest()[:20]


class _TokenizingDataModule(L.LightningDataModule):
    """Shared plumbing: the tokenizer, truncation and the loaders."""

    def __init__(self, batch_size: int, max_prompt_length: int, max_completion_length: int, shuffle: bool,
                 seed: int, tokenizer: str | None):
        super().__init__()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.max_prompt_length, self.max_completion_length = max_prompt_length, max_completion_length
        self.tokenizer_path = tokenizer
        self.tokenizer: Any = None
        self.train_items: list[dict[str, Any]] = []
        self.val_items: list[dict[str, Any]] = []

    def _get_tokenizer(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.tokenizer_path is None and getattr(module, "tokenizer", None) is not None:
            self.tokenizer = module.tokenizer  # type: ignore[union-attr]
        else:
            from transformers import AutoTokenizer

            from debate_lightning.models.embedded import resolve

            self.tokenizer = AutoTokenizer.from_pretrained(resolve(self.tokenizer_path or "embedded"))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def _prompt(self, chat: Chat) -> list[int]:
        ids = prompt_ids(self._get_tokenizer(), chat)
        return ids[-self.max_prompt_length :]  # keep the end: the instruction and transcript so far

    def _completion(self, text: str) -> list[int]:
        return completion_ids(self._get_tokenizer(), text)[: self.max_completion_length]

    def _loader(self, items: list[dict[str, Any]], train: bool) -> ResumableLoader:
        trainer = self.trainer
        return ResumableLoader(
            items, self.batch_size, self.collate, shuffle=self.shuffle and train, seed=self.seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            consumed_fn=(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed) if train and trainer
            is not None else None,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self._loader(self.train_items, train=True)

    def val_dataloader(self) -> ResumableLoader | list:
        return self._loader(self.val_items, train=False) if self.val_items else []

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError


def _paths(value: str | Sequence[str] | None, what: str) -> list[str]:
    """One path or a list of them (``train: [a.jsonl, b.jsonl]``) as a list."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else list(value)
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"{what}: expected a path or a non-empty list of paths, got {value!r}")
    return paths


class PreferenceDataModule(_TokenizingDataModule):
    """Preference-pair JSONL (``data/preferences.py``) for DPO.

    Args:
        train: path of the training pairs JSONL, or a list of them (read in order and
            concatenated: ``train: [t1/preferences.jsonl, t2/preferences.jsonl]``); ``synthetic:N``
            for N built-in example pairs. A bad line is an error naming its file and line.
        val: optional path (or list of paths) of validation pairs.
        batch_size: pairs per micro-batch (per device).
        max_prompt_length: prompt tokens kept (from the end).
        max_completion_length: completion tokens kept (from the start), EOS included.
        shuffle: shuffle training pairs each epoch (order fixed by seed and epoch).
        seed: shuffling seed.
        tokenizer: tokenizer path; default: the LightningModule's own tokenizer.
    """

    def __init__(self, train: list[str] | str = "data/preferences.jsonl", val: list[str] | str | None = None,
                 batch_size: int = 4, max_prompt_length: int = 1024, max_completion_length: int = 256,
                 shuffle: bool = True, seed: int = 0, tokenizer: str | None = None):
        super().__init__(batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer)
        self.train_paths, self.val_paths = _paths(train, "data.train"), _paths(val, "data.val")
        if not self.train_paths:
            raise ValueError("data.train: no preference file given")

    def _read(self, paths: list[str]) -> list[dict[str, Any]]:
        items = []
        for path in paths:
            before = len(items)
            for pair in load_pairs(path):
                p, c, r = self._prompt(pair.prompt), self._completion(pair.chosen), self._completion(pair.rejected)
                items.append({"prompt": p, "chosen": c, "rejected": r, "preference": pair.preference,
                              "key": _key(p, c, r)})
            if len(items) == before:
                raise DataError(path, None, None, "no preference pairs in the file")
        return items

    def setup(self, stage: str | None = None) -> None:
        if not self.train_items and stage in (None, "fit"):
            self.train_items = self._read(self.train_paths)
        if not self.val_items and self.val_paths:
            self.val_items = self._read(self.val_paths)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        packed = pack([i["prompt"] for i in items], [[i["chosen"], i["rejected"]] for i in items],
                      self._get_tokenizer().pad_token_id)
        return {"packed": packed, "preference": torch.tensor([i["preference"] for i in items], dtype=torch.float32),
                "keys": [i["key"] for i in items]}


# -- SFT rows -----------------------------------------------------------------------------------
def _result_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(f"tournament results {path} do not exist")
    return [path]


def ok_transcripts(paths: Sequence[str]) -> Iterator[tuple[Any, Any]]:
    """(RoundResult, Transcript) of every ok round in tournament result JSONL files or directories.

    A directory means every ``*.jsonl`` under it whose lines are rounds (files of other records,
    e.g. preference pairs, are skipped). A malformed line is a DataError naming file and line.
    """
    from debate_lightning.debate.engine import RoundResult

    for root in paths:
        for path in _result_files(Path(root)):
            for n, (line, d) in enumerate(iter_jsonl(path)):
                if "round_id" not in d:
                    if n == 0 and Path(root).is_dir():
                        break  # not a results file
                    raise DataError(path, line, "round_id", "not a tournament round (RoundResult) line")
                try:
                    result = RoundResult.from_dict(d)
                    transcript = result.transcript()
                except (TypeError, ValueError, KeyError) as e:
                    raise DataError(path, line, None, f"malformed round: {e}") from None
                if result.ok:
                    yield result, transcript


def sft_rows_from_results(paths: Sequence[str], select: str = "all") -> list[tuple[Chat, str]]:
    """(debater chat, speech) for every speech of every ok round in tournament result JSONL.

    ``select``: ``all`` speeches, those of the ``winner`` (the side the judge chose), or of the
    ``correct`` side. ``synthetic:N`` is the chosen speeches of N built-in example pairs.
    """
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.transcript import Transcript

    rows: list[tuple[Chat, str]] = []
    for root in paths:
        if root.startswith(SYNTHETIC):  # the chosen speeches of the example pairs
            rows += [(p.prompt, p.chosen) for p in synthetic_pairs(int(root[len(SYNTHETIC):]))]
            continue
        for result, transcript in ok_transcripts([root]):
            keep = {"all": None, "winner": result.winner, "correct": result.correct_index}[select]
            prompts = prompts_for(transcript.format)
            for s in transcript.speeches:
                if keep is not None and s.side != keep:
                    continue
                before = Transcript(transcript.question, transcript.format,
                                    [x for x in transcript.speeches if x.step < s.step])
                rows.append((before.debater_chat(s.side, prompts), s.text))
    return rows


def human_debate_transcripts(path: str) -> list[tuple[Any, Any]]:
    """(HumanDebate, Transcript) for every NYU human debate with debater speeches, rendered as a
    ``debate`` format with its quotes checked against the story (as a tournament's judge sees them)."""
    from debate_lightning.data.human_debates import read_human_debates
    from debate_lightning.data.question import Question
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.quotes import QuoteChecker
    from debate_lightning.debate.transcript import Speech, Transcript

    out = []
    for d in read_human_debates(path):
        turns = [t for t in d.turns if t.is_debater]
        if not turns:
            continue
        per_side = max(sum(1 for t in turns if t.index == s) for s in (0, 1))
        fmt = Format(kind="debate", num_speeches=max(1, per_side), word_limit=150)
        q = Question(story=d.story, story_title=d.story_title, question=d.question, positions=d.answers,
                     correct_index=d.correct_index if d.correct_index is not None else 0,
                     question_id=d.question_id, story_id=d.story_id, split="train", source="human_debates")
        checker = QuoteChecker(d.story)
        speeches = [Speech(side=int(t.index), step=k, text=t.text, quotes=checker.check_speech(t.text))  # type: ignore[arg-type]
                    for k, t in enumerate(turns)]
        out.append((d, Transcript(q, fmt, speeches)))
    return out


def sft_rows_from_human_debates(path: str, select: str = "all") -> list[tuple[Chat, str]]:
    """(debater chat, speech) for every human debater speech, rendered with the debate prompts."""
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.transcript import Transcript

    rows: list[tuple[Chat, str]] = []
    for d, t in human_debate_transcripts(path):
        keep = {"all": None, "correct": d.correct_index, "winner": None}[select]
        for s in t.speeches:
            if keep is not None and s.side != keep:
                continue
            rows.append((Transcript(t.question, t.format, t.speeches[: s.step]).debater_chat(s.side, prompts_for(t.format)),
                         s.text))
    return rows


def judge_rows(transcript: Any) -> list[tuple[Chat, str]]:
    """(judge chat, correct letter) in BOTH presentation orders: the exact chat the LLM judge
    scores (``Transcript.judge_chat``), and the letter under which the correct answer is shown
    there. Both orders, so a judge trained on them cannot learn a position prior."""
    from debate_lightning.debate.agents import prompts_for

    prompts, correct = prompts_for(transcript.format), transcript.question.correct_index
    return [(transcript.judge_chat(prompts, swap=swap), "AB"[correct ^ int(swap)]) for swap in (False, True)]


def judge_rows_from_results(paths: Sequence[str]) -> list[tuple[Chat, str]]:
    """Judge SFT rows of every ok round in tournament results (``synthetic:N``: N built-in debates)."""
    rows: list[tuple[Chat, str]] = []
    for root in paths:
        if root.startswith(SYNTHETIC):
            transcripts = synthetic_transcripts(int(root[len(SYNTHETIC):]))
        else:
            transcripts = [t for _, t in ok_transcripts([root])]
        rows += [row for t in transcripts for row in judge_rows(t)]
    return rows


def judge_rows_from_human_debates(path: str) -> list[tuple[Chat, str]]:
    """Judge SFT rows of the human debates whose correct answer is known, each debate once
    (the data records one line per judging session of the same debate)."""
    rows: list[tuple[Chat, str]] = []
    seen: set[str] = set()
    for d, t in human_debate_transcripts(path):
        key = json.dumps([d.question_id, [s.text for s in t.speeches]])
        if d.correct_index is None or key in seen:
            continue
        seen.add(key)
        rows += judge_rows(t)
    return rows


class SFTDataModule(_TokenizingDataModule):
    """SFT rows: debate speeches (``target: speech``) or the judge's verdict (``judge_verdict``).

    With ``target: speech`` a row is the chat a debater saw and its speech; the loss is on the
    speech tokens (and the end-of-turn token) only. With ``target: judge_verdict`` a row is the
    exact judge chat that the LLM judge scores (``Transcript.judge_chat``) and, as the only scored
    token, the letter of the correct answer in that presentation order; every round gives two
    rows, one per order (``swap`` false and true), so the judge cannot learn a position prior.
    The adapter this trains judges tournaments: ``models: {j: {path: ..., adapter: RUN/adapter}}``.

    Args:
        results: tournament result JSONL files or directories of them (``synthetic:N`` for N
            built-in example speeches, or for the judge N built-in debates).
        human_debates: path of the NYU human-debate transcripts (``debates-readable.jsonl``);
            for the judge, debates whose correct answer is unknown are skipped.
        target: ``speech`` (train a debater) or ``judge_verdict`` (train a judge).
        select: which speeches to imitate: ``all``, the judge's ``winner``'s, or the ``correct``
            side's (``winner`` does not apply to human debates: all their speeches are kept).
            A judge learns from every ok round: ``all`` only.
        val_fraction: share of rows (every k-th) held out for validation; 0 for none.
        batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer: as in
            :class:`PreferenceDataModule`.
    """

    def __init__(self, results: list[str] | None = None, human_debates: str | None = None,
                 target: Literal["speech", "judge_verdict"] = "speech",
                 select: Literal["all", "winner", "correct"] = "all", val_fraction: float = 0.0,
                 batch_size: int = 4, max_prompt_length: int = 1024, max_completion_length: int = 256,
                 shuffle: bool = True, seed: int = 0, tokenizer: str | None = None):
        super().__init__(batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer)
        if not results and not human_debates:
            raise ValueError("SFTDataModule needs data.results (tournament results) or data.human_debates")
        if target not in ("speech", "judge_verdict"):
            raise ValueError(f"data.target: unknown target {target!r}; choose 'speech' or 'judge_verdict'")
        if target == "judge_verdict" and select != "all":
            raise ValueError(f"data.select: {select!r} picks speeches; a judge (target judge_verdict) learns from "
                             "every ok round, so select must be 'all'")
        self.results, self.human_debates = list(results or []), human_debates
        self.target, self.select, self.val_fraction = target, select, val_fraction

    def _rows(self) -> list[tuple[Chat, str]]:
        if self.target == "judge_verdict":
            rows = judge_rows_from_results(self.results) if self.results else []
            return rows + (judge_rows_from_human_debates(self.human_debates) if self.human_debates else [])
        rows = sft_rows_from_results(self.results, self.select) if self.results else []
        return rows + (sft_rows_from_human_debates(self.human_debates, self.select) if self.human_debates else [])

    def _verdict(self, letter: str) -> list[int]:
        ids = completion_ids(self._get_tokenizer(), letter, eos=False)  # what the judge scores: no EOS after it
        if len(ids) != 1:
            raise ValueError(f"judge SFT: the tokenizer splits the verdict {letter!r} into {len(ids)} tokens {ids}; "
                             "the judge scores single-token answers")
        return ids

    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        rows = self._rows()
        if not rows:
            what = "ok rounds" if self.target == "judge_verdict" else "SFT speeches"
            raise ValueError(f"no {what} found in results={self.results} human_debates={self.human_debates}")
        completion = self._verdict if self.target == "judge_verdict" else self._completion
        items = [{"prompt": self._prompt(chat), "completion": completion(text)} for chat, text in rows]
        cut = sum(len(i["prompt"]) == self.max_prompt_length for i in items)
        if cut and self.target == "judge_verdict":  # the judge would learn from chats it never sees
            log.warning("judge SFT: %d of %d judge chats reach max_prompt_length=%d and may have lost their start "
                        "(system message, question); raise data.max_prompt_length", cut, len(items),
                        self.max_prompt_length)
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        per_round = 2 if self.target == "judge_verdict" else 1  # both orders of a round stay on one side
        held = [bool(every) and (i // per_round) % every == every - 1 for i in range(len(items))]
        self.val_items = [x for x, h in zip(items, held) if h]
        self.train_items = [x for x, h in zip(items, held) if not h]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        packed = pack([i["prompt"] for i in items], [[i["completion"]] for i in items],
                      self._get_tokenizer().pad_token_id)
        return {"packed": packed}
