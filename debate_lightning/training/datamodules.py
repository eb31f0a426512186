"""DataModules for DPO (preference pairs) and SFT (debate speeches).

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from debate_lightning.data.preferences import PreferencePair, read_preferences
from debate_lightning.data.question import DataError, iter_jsonl
from debate_lightning.training.policy import completion_ids, pack, prompt_ids

Chat = list[dict[str, str]]


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
    import re

    from debate_lightning.data.synthetic import generate
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Transcript

    fmt = Format()
    pairs: list[PreferencePair] = []
    stories = 1
    while True:
        questions = generate(stories, seed=seed, split=split)
        if len(questions) >= n or stories > 10 * n:
            break
        stories *= 2
    for q in questions[:n]:
        side = q.correct_index
        answer = q.positions[side]
        sentences = re.split(r"(?<=[.!?])\s+", q.story)
        evidence = next((x for x in sentences if answer.lower() in x.lower()), sentences[0])
        other = [x for x in sentences if x != evidence]
        filler = " ".join(other[2:4])
        chosen = (f"The answer is {answer}. The story says <quote>{evidence}</quote> "
                  f"This settles it: {answer} is stated directly. {' '.join(other[:2])} Nothing in the story "
                  f"supports {q.positions[1 - side]}, so the judge should choose {answer}.")
        rejected = (f"I think the answer is probably {answer}, because that seems most likely to me. "
                    f"{filler} None of this says much either way, but my instinct says {answer}, and the judge "
                    f"should trust my instinct over my opponent's.")
        chat = Transcript(q, fmt).debater_chat(side, prompts_for(fmt))
        pairs.append(PreferencePair(prompt=chat, chosen=chosen, rejected=rejected, preference=1.0,
                                    meta={"question": q.uid, "source": "synthetic"}))
    return pairs


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


class PreferenceDataModule(_TokenizingDataModule):
    """Preference-pair JSONL (``data/preferences.py``) for DPO.

    Args:
        train: path of the training pairs JSONL, or ``synthetic:N`` for N built-in example pairs.
        val: optional path of validation pairs.
        batch_size: pairs per micro-batch (per device).
        max_prompt_length: prompt tokens kept (from the end).
        max_completion_length: completion tokens kept (from the start), EOS included.
        shuffle: shuffle training pairs each epoch (order fixed by seed and epoch).
        seed: shuffling seed.
        tokenizer: tokenizer path; default: the LightningModule's own tokenizer.
    """

    def __init__(self, train: str = "data/preferences.jsonl", val: str | None = None, batch_size: int = 4,
                 max_prompt_length: int = 1024, max_completion_length: int = 256, shuffle: bool = True,
                 seed: int = 0, tokenizer: str | None = None):
        super().__init__(batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer)
        self.train_path, self.val_path = train, val

    def _read(self, path: str) -> list[dict[str, Any]]:
        items = []
        for pair in load_pairs(path):
            p, c, r = self._prompt(pair.prompt), self._completion(pair.chosen), self._completion(pair.rejected)
            items.append({"prompt": p, "chosen": c, "rejected": r, "preference": pair.preference, "key": _key(p, c, r)})
        if not items:
            raise DataError(path, None, None, "no preference pairs in the file")
        return items

    def setup(self, stage: str | None = None) -> None:
        if not self.train_items and stage in (None, "fit"):
            self.train_items = self._read(self.train_path)
        if not self.val_items and self.val_path:
            self.val_items = self._read(self.val_path)

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


def sft_rows_from_results(paths: Sequence[str], select: str = "all") -> list[tuple[Chat, str]]:
    """(debater chat, speech) for every speech of every ok round in tournament result JSONL.

    A directory means every ``*.jsonl`` under it whose lines are rounds (files of other records,
    e.g. preference pairs, are skipped). ``select``: ``all`` speeches, those of the ``winner``
    (the side the judge chose), or of the ``correct`` side.
    """
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.engine import RoundResult
    from debate_lightning.debate.transcript import Transcript

    rows: list[tuple[Chat, str]] = []
    for root in paths:
        if root.startswith(SYNTHETIC):  # the chosen speeches of the example pairs
            rows += [(p.prompt, p.chosen) for p in synthetic_pairs(int(root[len(SYNTHETIC):]))]
            continue
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
                if not result.ok:
                    continue
                keep = {"all": None, "winner": result.winner, "correct": result.correct_index}[select]
                prompts = prompts_for(transcript.format)
                for s in transcript.speeches:
                    if keep is not None and s.side != keep:
                        continue
                    before = Transcript(transcript.question, transcript.format,
                                        [x for x in transcript.speeches if x.step < s.step])
                    rows.append((before.debater_chat(s.side, prompts), s.text))
    return rows


def sft_rows_from_human_debates(path: str, select: str = "all") -> list[tuple[Chat, str]]:
    """(debater chat, speech) for every human debater speech, rendered with the debate prompts."""
    from debate_lightning.data.human_debates import read_human_debates
    from debate_lightning.data.question import Question
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Speech, Transcript

    rows: list[tuple[Chat, str]] = []
    for d in read_human_debates(path):
        turns = [t for t in d.turns if t.is_debater]
        if not turns:
            continue
        per_side = max(sum(1 for t in turns if t.index == s) for s in (0, 1))
        fmt = Format(kind="debate", num_speeches=max(1, per_side), word_limit=150)
        q = Question(story=d.story, story_title=d.story_title, question=d.question, positions=d.answers,
                     correct_index=d.correct_index if d.correct_index is not None else 0,
                     question_id=d.question_id, story_id=d.story_id, split="train", source="human_debates")
        speeches = [Speech(side=int(t.index), step=k, text=t.text) for k, t in enumerate(turns)]  # type: ignore[arg-type]
        keep = {"all": None, "correct": d.correct_index, "winner": None}[select]
        for s in speeches:
            if keep is not None and s.side != keep:
                continue
            rows.append((Transcript(q, fmt, speeches[: s.step]).debater_chat(s.side, prompts_for(fmt)), s.text))
    return rows


class SFTDataModule(_TokenizingDataModule):
    """Debate speeches for SFT: the loss is on the speech tokens only.

    Args:
        results: tournament result JSONL files or directories of them (``synthetic:N`` for N
            built-in example speeches).
        human_debates: path of the NYU human-debate transcripts (``debates-readable.jsonl``).
        select: which speeches to imitate: ``all``, the judge's ``winner``'s, or the ``correct``
            side's (``winner`` does not apply to human debates: all their speeches are kept).
        val_fraction: share of rows (every k-th) held out for validation; 0 for none.
        batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer: as in
            :class:`PreferenceDataModule`.
    """

    def __init__(self, results: list[str] | None = None, human_debates: str | None = None,
                 select: Literal["all", "winner", "correct"] = "all", val_fraction: float = 0.0,
                 batch_size: int = 4, max_prompt_length: int = 1024, max_completion_length: int = 256,
                 shuffle: bool = True, seed: int = 0, tokenizer: str | None = None):
        super().__init__(batch_size, max_prompt_length, max_completion_length, shuffle, seed, tokenizer)
        if not results and not human_debates:
            raise ValueError("SFTDataModule needs data.results (tournament results) or data.human_debates")
        self.results, self.human_debates = list(results or []), human_debates
        self.select, self.val_fraction = select, val_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        rows = sft_rows_from_results(self.results, self.select) if self.results else []
        if self.human_debates:
            rows += sft_rows_from_human_debates(self.human_debates, self.select)
        if not rows:
            raise ValueError(f"no SFT speeches found in results={self.results} human_debates={self.human_debates}")
        items = [{"prompt": self._prompt(chat), "completion": self._completion(text)} for chat, text in rows]
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        self.val_items = [x for i, x in enumerate(items) if every and i % every == every - 1]
        self.train_items = [x for i, x in enumerate(items) if not (every and i % every == every - 1)]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        packed = pack([i["prompt"] for i in items], [[i["completion"]] for i in items],
                      self._get_tokenizer().pad_token_id)
        return {"packed": packed}
