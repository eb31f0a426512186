"""Combine the results directories of a sharded tournament (``--shard i/n``) into one.

Shards must be parts of one tournament: their saved configs may differ only in ``output``, and
no round id may be finished in two of them. A round that failed in one shard and finished in
another keeps the finished result. Preference-pair files are concatenated.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from debate_lightning.debate.engine import RoundResult
from debate_lightning.tournament.preferences import PREFERENCES_FILE
from debate_lightning.tournament.results import ROUNDS_FILE, ResultsFile

_VOLATILE = ("timings",)  # differs between replays of the same round; ignored when comparing


class MergeConflict(ValueError):
    pass


def _comparable(r: RoundResult) -> dict:
    d = r.to_dict()
    for k in _VOLATILE:
        d.pop(k, None)
    for s in d.get("speeches", []):
        s.pop("seconds", None)
    return d


def merge_results(inputs: Sequence[str | Path], output: str | Path, force_config: bool = False) -> dict:
    """Merge ``inputs`` into ``output``; returns a summary (also written to ``merge.json``).

    Raises ``MergeConflict`` if a round id is finished in two inputs (identical copies are
    tolerated and kept once), or if the inputs' configs differ in anything but ``output``
    (unless ``force_config``). ``output`` must not already hold results.
    """
    out = Path(output)
    dest = ResultsFile(out)
    if dest.exists():
        raise MergeConflict(f"{dest.path} already holds results; merge into a new --output")
    if not inputs:
        raise ValueError("merge needs at least one results directory")
    configs = {}
    for d in inputs:
        if not (Path(d) / ROUNDS_FILE).is_file():
            raise FileNotFoundError(f"{d} has no {ROUNDS_FILE}")
        cfg_path = Path(d) / "config.yaml"
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            cfg.pop("output", None)
            configs[str(d)] = cfg
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) > 1 and not force_config:
        first, *rest = configs.items()
        diff = sorted({k for _, c in rest for k in set(c) | set(first[1]) if c.get(k) != first[1].get(k)})
        raise MergeConflict(
            f"the inputs were run with different configs (keys {', '.join(diff)} differ from {first[0]}); "
            "they are not shards of one tournament (pass --force to merge anyway)"
        )

    chosen: dict[str, tuple[RoundResult, str]] = {}
    duplicates = 0
    for d in inputs:
        for r in ResultsFile(d).latest():
            prev = chosen.get(r.round_id)
            if prev is None or (not prev[0].ok and r.ok):
                chosen[r.round_id] = (r, str(d))
                continue
            if not r.ok:
                continue  # a failed attempt never replaces anything
            if _comparable(prev[0]) == _comparable(r):
                duplicates += 1
                continue
            raise MergeConflict(
                f"round {r.round_id} is finished in both {prev[1]} and {d} with different results; "
                "shards must be disjoint (were they run with the same --shard?)"
            )
    for r, _ in chosen.values():
        dest.append(r)

    pairs = 0
    for d in inputs:
        src = Path(d) / PREFERENCES_FILE
        if src.is_file():
            out.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            if data and not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
            with (out / PREFERENCES_FILE).open("ab") as f:
                f.write(data)
            pairs += data.count(b"\n")
    if configs:
        shutil.copy(Path(next(iter(configs))) / "config.yaml", out / "config.yaml")
    summary = {
        "inputs": [str(d) for d in inputs],
        "rounds": len(chosen),
        "ok": sum(1 for r, _ in chosen.values() if r.ok),
        "failed": sum(1 for r, _ in chosen.values() if not r.ok),
        "identical_duplicates": duplicates,
        "preference_pairs": pairs,
    }
    (out / "merge.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
