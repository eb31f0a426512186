"""Activations from judged rounds: the judge model's hidden states where it would write its verdict.

``python -m debate_lightning activations --rounds DIR [DIR ...] --model embedded --layers -1 -4 -8
--output OUT`` renders, for every judged round and both presentation orders, the exact chat the
LLM judge scores (``Transcript.judge_chat``), and stores the hidden states at its last token (the
assistant prompt, where the judge's letter would come) for several layers from one forward.
Linear probes (``training/probe.py``) train on the store; a probe can then judge rounds.

The store (a directory; ``ActivationStore`` reads it):

- ``header.json``: what made the rows — ``model`` (the path as given), ``model_name``, ``adapter``,
  ``hidden_size``, ``num_layers``, ``layers`` (as requested), ``prompt_sets`` (sorted prompt-set keys
  of the rounds' formats, ``Format.prompts``), ``dtype`` (the model's compute dtype),
  ``format_version``. A later run into the same directory must agree on every one of them.
- ``index.jsonl``: one line per row, in row order: ``row``, ``shard``, ``offset``, ``round_id``,
  ``order`` (0 = as played, 1 = answers swapped), ``question_id``, ``story_id``, ``split``,
  ``format`` (kind), ``format_name``, ``label`` (1 when answer A is correct in this order),
  ``judge_p_a`` (the LLM judge's P(A) in this order, or null) and ``source`` (the rounds dir).
- ``shard-NNNNN.safetensors``: tensor ``activations``, float32 ``[rows, len(layers), hidden]``.

Kills lose at most the batch in flight: each batch's shard is written under a temporary name and
renamed into place, and only then are its index lines appended and fsynced. A restart drops index
lines whose shard is missing or short (and a half-written last line) and skips every
(round, order) still indexed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from debate_lightning.debate.agents import prompts_for
from debate_lightning.debate.engine import RoundResult
from debate_lightning.debate.transcript import Transcript
from debate_lightning.tournament.results import ROUNDS_FILE, ResultsFile

HEADER_FILE = "header.json"
INDEX_FILE = "index.jsonl"
TENSOR = "activations"
FORMAT_VERSION = 1
# The fields a later run (and a probe trained on the store) must agree on, in the order reported.
HEADER_FIELDS = ("format_version", "model", "model_name", "adapter", "hidden_size", "num_layers", "layers",
                 "prompt_sets", "dtype")
ORDERS = (0, 1)


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


# -- header -------------------------------------------------------------------------------------
class HeaderMismatch(ValueError):
    """Activations made with another model, layers or prompt sets than the ones at hand."""


class StoreBusy(RuntimeError):
    """Another run is writing to the same store."""


def check_header(expected: dict[str, Any], found: dict[str, Any], where: str) -> None:
    """Raise ``HeaderMismatch`` naming every field of ``HEADER_FIELDS`` where the two differ."""
    diffs = [f"{key}: {found.get(key)!r} there, {expected.get(key)!r} here" for key in HEADER_FIELDS
             if found.get(key) != expected.get(key)]
    if diffs:
        raise HeaderMismatch(f"{where} was made with other settings ({'; '.join(diffs)}); "
                             "use a new directory, or the settings it was made with")


def check_layers(layers: Sequence[int], num_layers: int, model_name: str) -> list[int]:
    """The layers as ints; an index outside ``outputs.hidden_states`` (len num_layers + 1) or a
    repeated one is a ValueError naming the model's layer count."""
    layers = [int(x) for x in layers]
    if not layers:
        raise ValueError("--layers: give at least one layer index (e.g. -1 for the last layer)")
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"--layers: {layer} is out of range for {model_name!r}, which has {num_layers} layers: hidden-state "
                f"indices run from {-(num_layers + 1)} to {num_layers} (0 = embeddings, -1 = last layer)")
    repeated = sorted({x for x in layers if layers.count(x) > 1})
    if repeated:
        raise ValueError(f"--layers: {repeated} given more than once; each layer is one probe")
    return layers


def _dtype_name(generator: Any) -> str:
    return str(getattr(generator.model, "dtype", "float32")).removeprefix("torch.")


# -- reading ------------------------------------------------------------------------------------
def _read_index(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The index lines, and how many bytes of a half-written last line (a kill mid-append) were
    left out. Any other malformed line is a ValueError naming the file and line."""
    if not path.is_file():
        return [], 0
    raw = path.read_bytes()
    keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
    lines = []
    for n, line in enumerate(keep.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict) or not {"shard", "offset", "round_id", "order"} <= set(d):
                raise ValueError("expected an object with shard, offset, round_id and order")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"activation index {path} line {n}: not an index line: {e}") from None
        lines.append(d)
    return lines, len(raw) - len(keep)


def _shard_rows(path: Path) -> int | None:
    """Rows in a shard, or None when it is missing or unreadable (cut short, not safetensors)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.get_slice(TENSOR).get_shape()[0])
    except Exception:  # noqa: BLE001 — any unreadable shard is as good as missing: its rows are redone
        return None


class ActivationStore:
    """A store written by ``extract_activations``: ``.header``, ``.index`` and ``.load()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header = self.path / HEADER_FILE
        if not header.is_file():
            raise FileNotFoundError(f"no activation store at {self.path}: {HEADER_FILE} is missing "
                                    "(make one with `python -m debate_lightning activations`)")
        try:
            self.header: dict[str, Any] = json.loads(header.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{header}: not JSON: {e}") from None
        self.index, _ = _read_index(self.path / INDEX_FILE)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def layers(self) -> list[int]:
        return list(self.header["layers"])

    def load(self) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """All rows as float32 ``[N, len(layers), hidden]``, with their index lines (same order)."""
        from safetensors.torch import load_file

        shape = (len(self.header["layers"]), int(self.header["hidden_size"]))
        out = torch.empty((len(self.index), *shape), dtype=torch.float32)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, line in enumerate(self.index):
            by_shard.setdefault(line["shard"], []).append((i, int(line["offset"])))
        for shard, rows in by_shard.items():
            path = self.path / shard
            if not path.is_file():
                raise FileNotFoundError(f"activation store {self.path}: index names {shard}, which is missing "
                                        "(rerun the activations command on it to redo those rows)")
            data = load_file(str(path))[TENSOR]
            if tuple(data.shape[1:]) != shape or max(o for _, o in rows) >= data.shape[0]:
                raise ValueError(f"activation store {self.path}: {shard} holds {tuple(data.shape)}, the index "
                                 f"expects rows of {shape} up to offset {max(o for _, o in rows)}")
            out[[i for i, _ in rows]] = data[[o for _, o in rows]].float()
        return out, list(self.index)


# -- writing ------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard(path: Path, activations: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tensor = activations.detach().to("cpu", torch.float32).contiguous()
    _replace_atomically(path, lambda tmp: save_file({TENSOR: tensor}, str(tmp)))


def append_index(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def repair_store(out: Path) -> tuple[list[dict[str, Any]], int]:
    """Make the index trustworthy after a kill: drop a half-written last line and lines whose
    shard is missing or short, renumber the rows, delete shards no line names (and temporary
    files). Returns the kept lines and how many were dropped."""
    index_path = out / INDEX_FILE
    lines, partial = _read_index(index_path)
    rows_of: dict[str, int | None] = {}
    kept = []
    for line in lines:
        shard = line["shard"]
        if shard not in rows_of:
            rows_of[shard] = _shard_rows(out / shard)
        n = rows_of[shard]
        if n is not None and 0 <= int(line["offset"]) < n:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped or partial:
        for row, line in enumerate(kept):
            line["row"] = row
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in kept)
        _replace_atomically(index_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    named = {line["shard"] for line in kept}
    for f in out.glob("shard-*.safetensors*"):
        if f.name not in named:  # written before a kill, never indexed (or a temporary file)
            f.unlink()
    return kept, dropped + (1 if partial else 0)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One writer per store: a second run into the same directory would interleave shards."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with (out / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreBusy(f"another activations run is writing to {out}") from None
        yield


# -- rounds -------------------------------------------------------------------------------------
@dataclass
class JudgedRound:
    source: str
    result: RoundResult
    transcript: Transcript

    def chat(self, order: int):
        return self.transcript.judge_chat(prompts_for(self.transcript.format), swap=bool(order))

    def row(self, order: int) -> dict[str, Any]:
        """The index line of this round in ``order``, without its place (row, shard, offset)."""
        q, fmt = self.transcript.question, self.transcript.format
        orders = self.result.p_a_orders
        # p_a_orders[s] is P(position 0) under order s; in the swapped order answer A is position 1.
        p0 = orders[order] if len(orders) > order else None
        judge_p_a = None if p0 is None or p0 != p0 else (p0 if order == 0 else 1.0 - p0)
        return {
            "round_id": self.result.round_id, "order": order, "question_id": q.question_id, "story_id": q.story_id,
            "split": q.split, "format": fmt.kind, "format_name": fmt.name,
            "label": int((q.correct_index == 0) != bool(order)), "judge_p_a": judge_p_a, "source": self.source,
        }


def judged_rounds(rounds_dirs: Sequence[str | Path]) -> tuple[list[JudgedRound], dict[str, int]]:
    """Every judged round (``r.ok``, its last attempt) of the directories, each round id once.

    The same round in two directories (a shard and its merge) is counted once when its judge chat
    is the same; different transcripts under one id are an error (one store per tournament then).
    """
    seen: dict[str, JudgedRound] = {}
    out: list[JudgedRound] = []
    stats = {"failed_rounds": 0, "duplicate_rounds": 0}
    for d in rounds_dirs:
        path = Path(d)
        if not path.is_dir():
            raise FileNotFoundError(f"--rounds: {d} is not a directory (give tournament --output directories)")
        if not (path / ROUNDS_FILE).is_file():
            raise FileNotFoundError(f"--rounds: {d} has no {ROUNDS_FILE} (not a tournament --output directory?)")
        for r in ResultsFile(path).latest():
            if not r.ok:
                stats["failed_rounds"] += 1
                continue
            try:
                jr = JudgedRound(str(d), r, r.transcript())
                chat = jr.chat(0)
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{path / ROUNDS_FILE}: round {r.round_id}: cannot rebuild its judge chat: {e}") \
                    from None
            if r.round_id in seen:
                if seen[r.round_id].chat(0) != chat:
                    raise ValueError(f"round {r.round_id} is in {seen[r.round_id].source} and {d} with different "
                                     "transcripts (different tournaments, same debater names?); extract them into "
                                     "separate --output directories")
                stats["duplicate_rounds"] += 1
                continue
            seen[r.round_id] = jr
            out.append(jr)
    if not out:
        raise ValueError(f"--rounds: no judged rounds in {', '.join(map(str, rounds_dirs))} "
                         f"({stats['failed_rounds']} failed or verdict-less)")
    return out, stats


# -- extraction ---------------------------------------------------------------------------------
def extract_activations(
    rounds_dirs: Sequence[str | Path],
    generator: Any,
    layers: Sequence[int],
    output: str | Path,
    batch_size: int = 16,
    progress: bool = True,
    limit: int | None = None,
    model: str | None = None,
    adapter: str | None = None,
) -> dict[str, Any]:
    """Store the judge model's activations for every judged round of ``rounds_dirs`` in
    ``output`` (both orders), ``batch_size`` rounds per forward and shard; resume what is there.

    ``generator`` is a ``LocalGenerator``; ``model`` / ``adapter`` are what the header records
    (default: the generator's name, no adapter). ``limit`` takes the first N judged rounds; the
    header's prompt sets are those of all judged rounds, so a later run without it resumes.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not callable(getattr(generator, "hidden_states", None)):
        raise ValueError(f"model {getattr(generator, 'name', generator)!r} gives no hidden states; activations need "
                         "a local (hf backend) model")
    out = Path(output)
    if any(out.resolve() == Path(d).resolve() for d in rounds_dirs) or (out / ROUNDS_FILE).exists():
        raise ValueError(f"--output {out} is a tournament directory; activations go to a directory of their own")
    rounds, stats = judged_rounds(rounds_dirs)
    num_layers, hidden = int(generator.num_layers), int(generator.hidden_size)
    layers = check_layers(layers, num_layers, generator.name)
    header = {
        "model": model or generator.name, "model_name": generator.name, "adapter": adapter,
        "hidden_size": hidden, "num_layers": num_layers, "layers": layers,
        "prompt_sets": sorted({jr.transcript.format.prompts for jr in rounds}), "dtype": _dtype_name(generator),
        "format_version": FORMAT_VERSION,
    }
    if limit is not None:
        rounds = rounds[: max(limit, 0)]

    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        header_path = out / HEADER_FILE
        if header_path.is_file():
            check_header(header, ActivationStore(out).header, f"activation store {out}")
        elif (out / INDEX_FILE).is_file():
            raise ValueError(f"{out} has an {INDEX_FILE} but no {HEADER_FILE}: not a store this command can resume")
        else:
            text = json.dumps(header, indent=2) + "\n"
            _replace_atomically(header_path, lambda tmp: tmp.write_text(text))
        index, dropped = repair_store(out)
        if dropped:
            print(f"activations: dropped {dropped} index line(s) of a killed run; their rows are redone",
                  file=sys.stderr)
        done = {(line["round_id"], int(line["order"])) for line in index}
        todo = [(jr, [s for s in ORDERS if (jr.result.round_id, s) not in done]) for jr in rounds]
        todo = [(jr, orders) for jr, orders in todo if orders]
        next_shard = 1 + max((int(line["shard"].split("-")[1].split(".")[0]) for line in index), default=-1)
        row = len(index)
        written = 0
        bar = tqdm(total=len(rounds), initial=len(rounds) - len(todo), disable=not progress, file=sys.stderr,
                   desc="activations", unit="round", dynamic_ncols=True, mininterval=0.5)
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                pairs = [(jr, s) for jr, orders in batch for s in orders]
                ids = [generator.chat_ids(jr.chat(s)) for jr, s in pairs]
                with torch.no_grad():
                    acts = generator.hidden_states(ids, layers)
                if tuple(acts.shape) != (len(ids), len(layers), hidden):
                    raise RuntimeError(f"{generator.name}.hidden_states gave shape {tuple(acts.shape)}, expected "
                                       f"{(len(ids), len(layers), hidden)}")
                shard = shard_name(next_shard)
                write_shard(out / shard, acts)
                lines = [{"row": row + k, "shard": shard, "offset": k, **jr.row(s)} for k, (jr, s) in enumerate(pairs)]
                append_index(out / INDEX_FILE, lines)
                next_shard, row, written = next_shard + 1, row + len(lines), written + len(lines)
                bar.update(len(batch))
        finally:
            bar.close()
    wanted = 2 * len(rounds)
    return {
        "output": str(out), "rounds": len(rounds), "rows": row, "rows_written": written,
        "rows_skipped": wanted - written, "dropped_index_lines": dropped, **stats,
    }


# -- command ------------------------------------------------------------------------------------
def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def model_name_of(path: str) -> str:
    """The name a model path goes by in headers: the embedded model's, else the path's last part."""
    from debate_lightning.models.embedded import EMBEDDED

    return "smollm2-135m" if path == EMBEDDED else Path(path).name


def activations_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m debate_lightning activations",
        description="Store the judge model's hidden states at the verdict position for every judged round "
                    "(both answer orders): the data linear-probe judges train on.")
    ap.add_argument("--rounds", nargs="+", required=True, metavar="DIR", help="tournament --output directories")
    ap.add_argument("--model", default="embedded", help="the judge model: embedded, a directory, a .gguf file")
    ap.add_argument("--layers", nargs="+", type=int, default=[-1], metavar="L",
                    help="hidden-state indices (0 = embeddings, -1 = last layer); several come from one forward")
    ap.add_argument("--output", required=True, metavar="DIR", help="the store (created, or resumed)")
    ap.add_argument("--batch-size", type=int, default=16, help="rounds per forward and per shard (x2 orders)")
    ap.add_argument("--dtype", default="float32", help="the model's compute dtype (float32, bfloat16, auto)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    ap.add_argument("--adapter", default=None, help="a PEFT adapter directory to load on top of --model")
    ap.add_argument("--limit", type=int, default=None, help="only the first N judged rounds")
    ap.add_argument("--progress", type=_yes_no, nargs="?", const=True, default=True,
                    help="a progress bar on stderr (--progress false or --no-progress: none)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help=argparse.SUPPRESS)
    return ap


def activations_main(argv: list[str] | None = None) -> int:
    from debate_lightning.data.question import DataError
    from debate_lightning.models.registry import ModelSpec, build_generator

    args = activations_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        judged_rounds(args.rounds)  # a wrong directory fails before the model loads
        name = model_name_of(args.model)
        spec = ModelSpec(backend="hf", path=args.model, dtype=args.dtype, device=args.device, adapter=args.adapter,
                         max_batch_size=2 * max(args.batch_size, 1))
        try:
            generator = build_generator(spec, name=name)
        except OSError as e:  # a path that is no model reads as a hub id, which fails offline
            raise FileNotFoundError(f"--model {args.model}: cannot load it: {e}") from None
        try:
            summary = extract_activations(args.rounds, generator, args.layers, args.output, args.batch_size,
                                          args.progress, args.limit, model=args.model, adapter=args.adapter)
        finally:
            generator.close()
    except (FileNotFoundError, ValueError, DataError, StoreBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"{summary['rounds']} rounds: wrote {summary['rows_written']} rows, skipped {summary['rows_skipped']} "
          f"already stored; {summary['rows']} rows in {summary['output']}")
    return 0
