"""``ActivationDataModule``: judge activations with "A is correct" labels, split by story.

The rows come from an activation store (``tournament/activations.py``): the judge model's hidden
states at the verdict position of every judged round, in both answer orders. Three ways in:

- ``activations: DIR``: a store made by ``python -m debate_lightning activations`` (read as is);
- ``rounds: [DIR, ...]``: tournament directories; their activations are extracted with ``model``
  into ``<default_root_dir>/probe_data/`` (and reused when the same run is repeated);
- neither: a small tournament is played on the fly with ``model`` on ``questions`` in ``format``
  (the synthetic dataset's *train* split, so a probe never saw the stories that tournaments
  judge by default, which use the val split), then extracted the same way.

Train and validation rows are split **by story**: all rows of a story (both orders, both side
assignments, every question and format about it) land on one side, so the probe cannot pass
validation by recognising a story it was trained on. The split is a seeded shuffle of the sorted
story ids, so it depends on ``seed`` and the stories only. The split is made over *all* the rows of
the store before ``formats`` and ``val_formats`` pick rows on each side, so runs on one store with
different formats hold out the same stories: a probe trained on debate rows can be validated on
consultancy rows of stories it never saw (``val_formats``, and ``probe-table`` across runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from debate_lightning.data.config import DataConfig
from debate_lightning.debate.formats import Format

CACHE_DIR = "probe_data"  # under the trainer's default_root_dir


def split_by_story(rows: list[dict[str, Any]], val_fraction: float, seed: int,
                   where: str = "the activations") -> tuple[list[int], list[int]]:
    """Row indices (train, val) such that no story is on both sides.

    ``round(val_fraction * stories)`` stories (at least one) go to validation, chosen by a
    ``seed``-ed shuffle of the sorted story ids; fewer than two stories cannot be split (a
    ValueError naming ``where`` and the counts).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    stories = sorted({str(r["story_id"]) for r in rows})
    n_val = max(1, round(val_fraction * len(stories)))
    if len(stories) - n_val < 1:
        raise ValueError(f"{where}: {len(rows)} rows from {len(stories)} story(ies) cannot be split by story into "
                         f"train and validation (val_fraction {val_fraction} leaves one side empty); "
                         "give rounds about more stories")
    random.Random(seed).shuffle(stories)
    val_stories = set(stories[:n_val])
    train = [i for i, r in enumerate(rows) if str(r["story_id"]) not in val_stories]
    val = [i for i, r in enumerate(rows) if str(r["story_id"]) in val_stories]
    return train, val


def format_names(rows: list[dict[str, Any]]) -> list[str]:
    """The format names (``debate``, ``consultancy0``, …) the rows hold, sorted."""
    return sorted({str(r.get("format_name", r.get("format"))) for r in rows})


def of_format(row: dict[str, Any], formats: list[str] | None) -> bool:
    """Whether ``row`` is of one of ``formats`` (kinds or names; None: any)."""
    return formats is None or row.get("format") in formats or row.get("format_name") in formats


def _of_formats(rows: list[dict[str, Any]], picks: list[int], formats: list[str] | None, option: str,
                side: str, where: Path) -> list[int]:
    keep = [i for i in picks if of_format(rows[i], formats)]
    if not keep:
        raise ValueError(f"activation store {where}: no {side} rows of formats {formats} ({option}); "
                         f"the store holds {format_names(rows)}, and the {side} stories hold "
                         f"{format_names([rows[i] for i in picks])}")
    return keep


def select_layers(store_layers: list[int], wanted: list[int] | Literal["all"], where: str) -> list[int]:
    """Positions in the store's layer axis of the ``wanted`` layers (``all``: every one, in the
    store's order). A layer the store lacks is a ValueError naming the store and its layers."""
    if wanted == "all":
        return list(range(len(store_layers)))
    missing = [layer for layer in wanted if layer not in store_layers]
    if missing or not wanted:
        raise ValueError(f"activation store {where} holds layers {store_layers}; layers {list(wanted)} were asked for "
                         f"({missing or 'none'} not in it): extract those layers, or ask for some of {store_layers}")
    repeated = sorted({x for x in wanted if list(wanted).count(x) > 1})
    if repeated:
        raise ValueError(f"layers: {repeated} given more than once; each layer is one probe")
    return [store_layers.index(layer) for layer in wanted]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class ActivationDataModule(L.LightningDataModule):
    """Judge activations at the verdict position, labelled "answer A is correct", split by story.

    Args:
        activations: an activation store directory (``python -m debate_lightning activations``);
            excludes ``rounds``.
        rounds: tournament ``--output`` directories (one, or a list ``[A, B]``); their judged
            rounds are extracted with ``model`` into ``<default_root_dir>/probe_data/activations-<digest>/``.
        model: the judge model whose activations are read when they are extracted here (given
            ``rounds``, or on the fly): ``embedded``, a directory or a ``.gguf`` file. A given
            store carries its own model in its header.
        layers: hidden-state indices to probe (0 = embeddings, -1 = the last layer), one probe
            each; ``all``: every decoder layer (``-num_layers`` … ``-1``; of a given store, all
            of its layers). A layer a given store lacks is an error.
        formats: train (and, without ``val_formats``, validate) on rows of these format kinds or
            names only (``debate``, ``consultancy``, ``consultancy0``, ``empty``, …); null keeps all.
        val_formats: validate on rows of these format kinds or names (transfer: train on debate,
            validate on consultancy); null: as ``formats``.
        val_fraction: share of stories held out for validation.
        seed: seed of the story split and of the training order.
        batch_size: rows per optimizer step (a store of at most this many train rows trains
            full-batch).
        questions: on the fly only: the questions of the tournament played to make rounds (both
            side assignments by default, so two rounds each). Default: 12 synthetic train-split
            stories, one question each.
        format: on the fly only: how those rounds are played.
        max_new_tokens: on the fly only: most tokens per speech.
        temperature: on the fly only: the debaters' sampling temperature.
        dtype: the model's compute dtype when extracting (``auto``: as tournaments load it).
        device: where the model runs when extracting (``cpu``, ``cuda``, ``auto``).
        extract_batch_size: rounds per forward when extracting (x2 orders).
        cache_dir: where on-the-fly rounds and extracted stores go; null: ``<default_root_dir>/probe_data``.
        progress: progress bars while playing and extracting.
    """

    def __init__(
        self,
        activations: str | None = None,
        rounds: list[str] | str | None = None,
        model: str = "embedded",
        layers: list[int] | Literal["all"] = "all",
        formats: list[str] | None = None,
        val_formats: list[str] | None = None,
        val_fraction: float = 0.25,
        seed: int = 0,
        batch_size: int = 512,
        questions: DataConfig = DataConfig(source="synthetic", split="train", limit=12, both_orders=True,
                                           options={"questions_per_story": 1}),
        format: Format = Format(kind="debate", num_speeches=1, word_limit=30),
        max_new_tokens: int = 32,
        temperature: float = 0.7,
        dtype: str = "auto",
        device: str = "cpu",
        extract_batch_size: int = 16,
        cache_dir: str | None = None,
        progress: bool = True,
    ):
        super().__init__()
        if activations is not None and rounds:
            raise ValueError("give data.activations (a store) or data.rounds (tournament directories), not both")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        if batch_size < 1 or extract_batch_size < 1:
            raise ValueError(f"data.batch_size and data.extract_batch_size must be >= 1, got {batch_size}, "
                             f"{extract_batch_size}")
        self.activations, self.model = activations, model
        self.rounds = [rounds] if isinstance(rounds, str) else list(rounds or [])
        self.layers_wanted = layers if layers == "all" else [int(x) for x in layers]
        self.formats = list(formats) if formats else None
        self.val_formats = list(val_formats) if val_formats else None
        self.val_fraction, self.seed, self.batch_size = val_fraction, seed, batch_size
        self.questions, self.format = questions, format
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.dtype, self.device, self.extract_batch_size = dtype, device, extract_batch_size
        self.cache_dir, self.progress = cache_dir, progress
        # Filled by setup(): what the module and the probe files need.
        self.header: dict[str, Any] = {}
        self.layers: list[int] = []
        self.store_path: str | None = None
        self.train_x = self.val_x = self.train_y = self.val_y = None
        self.train_rows: list[dict[str, Any]] = []
        self.val_rows: list[dict[str, Any]] = []

    # -- where the rows come from -----------------------------------------------------------------
    def _cache_root(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            raise ValueError("ActivationDataModule: without a trainer, give data.cache_dir (where rounds and "
                             "activations are made) or data.activations (a store)")
        return Path(trainer.default_root_dir) / CACHE_DIR

    def _tournament_config(self, output: Path):
        from debate_lightning.models.registry import ModelSpec
        from debate_lightning.tournament.config import DebaterConfig, JudgeConfig, TournamentConfig

        n_rounds = (self.questions.limit or 64) * (2 if self.questions.both_orders else 1)
        return TournamentConfig(
            data=self.questions,
            models={"judge": ModelSpec(backend="hf", path=self.model, dtype=self.dtype, device=self.device,
                                       max_batch_size=max(8, min(n_rounds, 64)))},
            debaters=[DebaterConfig(name="debater", model="judge", max_new_tokens=self.max_new_tokens,
                                    temperature=self.temperature)],
            judge=JudgeConfig(model="judge", both_orders=True),
            formats=[self.format], output=str(output), rounds_in_flight=max(1, n_rounds), seed=self.seed,
        )

    def _paths(self) -> tuple[list[Path], Path]:
        """(rounds dirs, store dir), the same on every rank; nothing is made here."""
        if self.activations is not None:
            return [], Path(self.activations)
        root = self._cache_root()
        if self.rounds:
            rounds = [Path(d) for d in self.rounds]
        else:
            cfg = self._tournament_config(Path("."))
            spec = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("output", "rounds_in_flight")}
            rounds = [root / f"rounds-{_digest(spec)}"]
        key = {"rounds": [str(d.resolve()) for d in rounds], "model": self.model, "layers": self.layers_wanted,
               "dtype": self.dtype}
        return rounds, root / f"activations-{_digest(key)}"

    def prepare_data(self) -> None:
        """Play the on-the-fly tournament and extract activations, unless already done (rank 0)."""
        if self.activations is not None:
            return
        from debate_lightning.tournament.activations import ActivationStore, judged_rounds

        rounds, store = self._paths()
        if not self.rounds:
            self._play(rounds[0])
        wanted = 2 * len(judged_rounds(rounds)[0])
        if (store / "header.json").is_file() and len(ActivationStore(store)) >= wanted:
            return  # a rerun of the same run: reuse without loading the model
        self._extract(rounds, store)

    def _play(self, output: Path) -> None:
        from debate_lightning.tournament.results import ResultsFile
        from debate_lightning.tournament.runner import run_tournament

        cfg = self._tournament_config(output)
        print(f"probe data: {cfg.data.limit} question(s) played in {self.format.name} by {self.model} "
              f"in {output}", file=sys.stderr)
        output.mkdir(parents=True, exist_ok=True)
        run_tournament(cfg, output, resume=ResultsFile(output).exists(), progress=self.progress)

    def _extract(self, rounds: list[Path], store: Path) -> None:
        from debate_lightning.models.registry import ModelSpec, build_generator
        from debate_lightning.tournament.activations import extract_activations, model_name_of

        spec = ModelSpec(backend="hf", path=self.model, dtype=self.dtype, device=self.device,
                         max_batch_size=2 * self.extract_batch_size)
        generator = build_generator(spec, name=model_name_of(self.model))
        try:
            layers = (list(range(-generator.num_layers, 0)) if self.layers_wanted == "all"
                      else self.layers_wanted)
            print(f"probe data: activations of layers {layers} into {store}", file=sys.stderr)
            extract_activations(rounds, generator, layers, store, batch_size=self.extract_batch_size,
                                progress=self.progress, model=self.model)
        finally:
            close = getattr(generator, "close", None)
            if callable(close):
                close()

    # -- the rows ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the store, keep the requested layers and formats, split by story."""
        if self.train_x is not None:
            return
        from debate_lightning.tournament.activations import ActivationStore

        _, path = self._paths()
        store = ActivationStore(path)
        if len(store) == 0:
            raise ValueError(f"activation store {path} holds no rows (its index is empty: were any rounds judged? "
                             "rerun the activations command on it)")
        x, rows = store.load()
        picks = select_layers(list(store.header["layers"]), self.layers_wanted, str(path))
        x = x[:, picks]
        # Split over every row first, so the held-out stories do not depend on the formats asked for.
        train, val = split_by_story(rows, self.val_fraction, self.seed, where=f"activation store {path}")
        val_formats = self.val_formats if self.val_formats is not None else self.formats
        train = _of_formats(rows, train, self.formats, "data.formats", "train", path)
        val = _of_formats(rows, val, val_formats, "data.val_formats" if self.val_formats else "data.formats",
                          "validation", path)
        y = torch.tensor([float(r["label"]) for r in rows])
        self.header, self.store_path = dict(store.header), str(path)
        self.layers = [int(store.header["layers"][i]) for i in picks]
        self.train_x, self.train_y, self.train_rows = x[train], y[train], [rows[i] for i in train]
        self.val_x, self.val_y, self.val_rows = x[val], y[val], [rows[i] for i in val]

    def summary(self) -> dict[str, Any]:
        """Rows and stories on each side (for the report and probe.json)."""
        rows = self.train_rows + self.val_rows
        train_stories = sorted({str(r["story_id"]) for r in self.train_rows})
        return {"store": self.store_path, "seed": self.seed, "val_fraction": self.val_fraction,
                "train_rows": len(self.train_rows), "val_rows": len(self.val_rows),
                "train_stories": len(train_stories),
                "val_stories": len({r["story_id"] for r in self.val_rows}),
                "formats": format_names(rows),
                "train_formats": format_names(self.train_rows), "val_formats": format_names(self.val_rows),
                # which stories the probe saw: `probe-table` validates only on the others
                "train_story_ids": train_stories}

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=self.batch_size, shuffle=True,
                          generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_x, self.val_y), batch_size=max(self.batch_size, len(self.val_rows)))

