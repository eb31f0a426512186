"""``DataConfig``: which questions a job uses, as one typed record.

Tournaments, the rollout DataModule and the evaluation callbacks all name their questions with
it, so it lives with the loaders it calls rather than in any one of those rooms.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Which questions to debate.

    Attributes:
        source: ``synthetic`` (built in), ``quality``, ``human_debates``, ``jsonl`` (any file in
            the documented Question fields, see ``data/jsonl.py``) or ``run`` (replay the
            questions and side orders of an earlier tournament, in their order).
        path: the dataset file (quality, human_debates, jsonl); for ``run``, the earlier
            tournament's ``output`` directory. To replay a whole run, set ``limit: null`` and
            its split (or ``split: null``): both filter a replay as they filter any source.
        split: ``train``, ``val`` or ``test``; null for all.
        limit: at most this many questions (before side orders are doubled); null for all.
        seed: dataset seed (synthetic stories, QuALITY side order).
        both_orders: debate every question in both side orders (a side order the source already
            holds, as a run played in both orders does, is not added twice).
        exclude_runs: earlier tournament ``output`` directories whose questions (by
            ``question_id``, both side orders) this job leaves out; ``limit`` counts after.
        options: source-specific options, e.g. ``num_stories`` or ``difficult_only``.
    """

    source: str = "synthetic"
    path: str | None = None
    split: str | None = "val"
    limit: int | None = 4
    seed: int = 0
    both_orders: bool = True
    exclude_runs: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def load(self) -> list:
        """The questions this config names (a list of ``Question``), via ``load_questions``."""
        # imported here, not at the top: ``data/__init__`` imports this module and must not import
        # ``data.loading`` (``python -m debate_lightning.data.loading`` would find it loaded already)
        from debate_lightning.data.loading import load_questions

        return load_questions(
            self.source, path=self.path, split=self.split, limit=self.limit, seed=self.seed,
            both_orders=self.both_orders, exclude_runs=self.exclude_runs, **self.options,
        )
