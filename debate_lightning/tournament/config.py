"""The tournament config: one typed dataclass tree, parsed by jsonargparse from YAML and flags.

An unknown key or a wrong type is rejected by jsonargparse with the key's full path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from debate_lightning.data.config import DataConfig
from debate_lightning.debate.formats import Format
from debate_lightning.models.base import SamplingParams
from debate_lightning.models.registry import ModelSpec


@dataclass
class DebaterConfig:
    """A named debater: a model from ``models`` plus how it samples.

    Attributes:
        name: the name rounds, ratings and reports use.
        model: a key of ``models``.
        best_of_n: >1 samples that many candidates per speech and keeps the judge's favourite.
        opponent_n: with ``best_of_n > 1``, score each candidate after this many sampled replies
            of the opponent (its next speech, sampled with this debater's model and sampling;
            the replies never enter the round) instead of alone; 0 scores candidates alone.
            See ``debate/best_of_n.py``.
        selection: how ``best_of_n`` picks: ``max`` (highest mean score over the opponent
            replies) or ``maxmin`` (highest worst score over them: the robust choice).
        repetition_penalty: >1 discourages repeating tokens (CTRL's penalty; 1 = off). hf models and
            vLLM-style servers; the Anthropic API refuses it.
    """

    name: str = "smollm2"
    model: str = "embedded"
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    best_of_n: int = 1
    repetition_penalty: float = 1.0
    opponent_n: int = 0
    selection: Literal["max", "maxmin"] = "max"

    def sampling(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=seed,
        )


@dataclass
class JudgeConfig:
    """The judge, configured apart from the debaters.

    Attributes:
        model: a key of ``models``; any backend works (text verdicts for APIs without log-probs).
        both_orders: also judge with the answers presented in the other order and average.
        probe: a linear probe (a directory holding ``probe.safetensors`` + ``probe.json``, or the
            ``.safetensors`` file) trained on ``model``'s activations by ``fit --config
            configs/probe.yaml``: P(A) then comes from the probe over the model's hidden states at
            the verdict position instead of its A/B log-probs (an ``hf`` model only). The probe
            must come from the same model and have seen the formats' prompt sets. Rounds judged
            this way carry the judge name ``<model>+probe:<name>@<file digest>``.
        probe_name: which probe of the file (a layer such as ``"-1"``, or ``"concat"``); null
            takes the one the file names best (by validation AUROC).
    """

    model: str = "embedded"
    both_orders: bool = True
    probe: str | None = None
    probe_name: str | int | None = None

    def __post_init__(self) -> None:
        if self.probe_name is not None and not self.probe:
            raise ValueError(f"judge.probe_name is {self.probe_name!r} but judge.probe is not set")


@dataclass
class ScheduleConfig:
    """Who debates whom.

    Attributes:
        kind: ``self_play`` (each debater against itself), ``round_robin`` (every pair, both
            sides, the same questions), ``capped_round_robin`` (round robin with at most ``cap``
            questions per pair), or ``custom`` (the listed ``matchups``).
        matchups: ``[side_A_debater, side_B_debater]`` pairs for ``custom``.
        cap: questions per pair for ``capped_round_robin``.
        repeats: play every round this many times (different samples, different round ids).
    """

    kind: Literal["self_play", "round_robin", "capped_round_robin", "custom"] = "self_play"
    matchups: list[list[str]] = field(default_factory=list)
    cap: int | None = None
    repeats: int = 1


@dataclass
class PreferenceConfig:
    """Preference pairs for DPO, written beside the results (see ``tournament/preferences.py``).

    Attributes:
        mode: ``none``; ``best_of_n`` (pairs from the scored candidates of debaters with
            ``best_of_n > 1``); ``branched_half`` (one side writes ``branches`` alternatives at
            each of its speeches and the round continues from each); ``branched_full`` (both
            sides branch at every speech: ``branches ** speeches`` leaves per round);
            ``branched_single_random`` (one speech per round, a random step and side drawn
            with ``seed`` and the round id, branches: ``branches`` leaves per round).
        reward: how two values become ``preference``: ``log_prob``, ``prob``, ``logit``,
            ``sigmoid`` or ``binary`` (formulas in ``preferences.preference``).
        temperature: the ``sigmoid`` reward's temperature.
        pairing: ``best_rest``, ``best_worst`` or ``all`` pairs among a speech's alternatives.
        min_margin: drop pairs whose values differ by at most this.
        branches: alternatives per branching speech.
        branch_side: in HALF branching, the side that branches; null alternates by round id.
            In SINGLE_RANDOM, the side whose speech is drawn; null draws from both sides.
        output: the pairs file; null for ``OUTPUT/preferences.jsonl``.
    """

    mode: Literal["none", "best_of_n", "branched_half", "branched_full", "branched_single_random"] = "none"
    reward: Literal["log_prob", "prob", "logit", "sigmoid", "binary"] = "prob"
    temperature: float = 0.1
    pairing: Literal["best_rest", "best_worst", "all"] = "best_rest"
    min_margin: float = 0.0
    branches: int = 2
    branch_side: int | None = None
    output: str | None = None


@dataclass
class TournamentConfig:
    """A tournament: data, models, debaters, judge, formats and schedule.

    Attributes:
        output: the results directory (``rounds.jsonl``, ``config.yaml``, report).
        rounds_in_flight: rounds played together; each step of them is one batched call per
            debater. Results are appended after every group, so a kill loses at most one group.
        seed: sampling seed; each group of rounds is seeded from it and its first round id.
    """

    data: DataConfig = field(default_factory=DataConfig)
    models: dict[str, ModelSpec] = field(default_factory=lambda: {"embedded": ModelSpec()})
    debaters: list[DebaterConfig] = field(default_factory=lambda: [DebaterConfig()])
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    formats: list[Format] = field(default_factory=lambda: [Format()])
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    output: str = "outputs/tournament"
    rounds_in_flight: int = 32
    seed: int = 0

    def check(self) -> None:
        """Cross-field checks jsonargparse cannot do, each naming the key at fault."""
        names = [d.name for d in self.debaters]
        if len(set(names)) != len(names):
            raise ValueError(f"debaters: names must be unique, got {names}")
        for i, d in enumerate(self.debaters):
            if d.model not in self.models:
                raise ValueError(f"debaters[{i}].model: {d.model!r} is not a key of models ({sorted(self.models)})")
            if d.best_of_n < 1:
                raise ValueError(f"debaters[{i}].best_of_n must be >= 1, got {d.best_of_n}")
            if d.opponent_n < 0:
                raise ValueError(f"debaters[{i}].opponent_n must be >= 0, got {d.opponent_n}")
            if (d.opponent_n > 0 or d.selection != "max") and d.best_of_n < 2:
                raise ValueError(f"debaters[{i}]: opponent_n/selection choose among best-of-N candidates; "
                                 f"set best_of_n > 1 (got {d.best_of_n})")
        if self.judge.model not in self.models:
            raise ValueError(f"judge.model: {self.judge.model!r} is not a key of models ({sorted(self.models)})")
        for i, m in enumerate(self.schedule.matchups):
            if len(m) != 2 or any(n not in names for n in m):
                raise ValueError(f"schedule.matchups[{i}]: expected two debater names from {names}, got {m}")
        if self.schedule.kind == "custom" and not self.schedule.matchups:
            raise ValueError("schedule.kind is custom but schedule.matchups is empty")
        if self.rounds_in_flight < 1:
            raise ValueError("rounds_in_flight must be >= 1")
        p = self.preferences
        if p.mode.startswith("branched") and p.branches < 2:
            raise ValueError(f"preferences.branches must be >= 2 for {p.mode}, got {p.branches}")
        if p.branch_side not in (None, 0, 1):
            raise ValueError(f"preferences.branch_side must be 0, 1 or null, got {p.branch_side}")
        if p.mode == "best_of_n" and not any(d.best_of_n > 1 for d in self.debaters):
            raise ValueError("preferences.mode is best_of_n but no debater has best_of_n > 1")
        if p.temperature <= 0:
            raise ValueError(f"preferences.temperature must be > 0, got {p.temperature}")
