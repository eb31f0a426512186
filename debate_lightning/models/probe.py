"""Linear-probe judges: P(A) from the judge model's activations at the verdict position.

A probe (trained by ``fit --config configs/probe.yaml``, ``training/probe.py``) is two files in
one directory:

- ``probe.safetensors``: per probe NAME (a layer index as a string such as ``"-1"``, or
  ``"concat"``) the tensors ``NAME.weight`` [D], ``NAME.bias`` [] and the train-set
  standardisation ``NAME.mean`` [D], ``NAME.std`` [D]; D = hidden size for one layer, or
  len(layers) x hidden size for the layers concatenated in the order ``probes[NAME]["layers"]`` gives;
- ``probe.json``: what made it (``model`` as a config gives it, ``model_name``, ``hidden_size``,
  ``num_layers``, ``layers``, ``prompt_sets``), ``probes`` ({NAME: {"layers": [...]}}), ``best``
  (the NAME with the best validation AUROC), ``val`` metrics and ``format_version``.

P(A correct) = sigmoid(weight · ((x - mean) / std) + bias), x the activations at the last token of
the judge chat (``LocalGenerator.hidden_states``). ``ProbeJudgeGenerator`` puts that behind the
``Generator`` protocol's ``choice_logprobs``, so ``debate.agents.Judge`` judges with it unchanged:
both presentation orders, averaged, exactly as it does with an LLM's A/B log-probs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from debate_lightning.models.base import Chat, Generation, Generator, LocalGenerator, SamplingParams, layer_indices

PROBE_FILE = "probe.safetensors"
META_FILE = "probe.json"
FORMAT_VERSION = 1
PROBE_MARK = "+probe"  # in a probe judge's name: reports tell probe verdicts from an LLM's by it
TRAIN_HINT = "train one with `python -m debate_lightning fit --config configs/probe.yaml`"


class ProbeCannotWrite(NotImplementedError):
    """A probe judge reads activations; it writes no text and scores no continuation."""


def probe_judge_name(model: str, probe: str, digest: str | None = None) -> str:
    """``embedded+probe:-1@1a2b3c4d``: the judge name rounds judged by a probe carry. The digest
    (of the probe file) tells apart probes of one layer from different runs, e.g. trained on
    debate or on consultancy rounds, when their verdicts meet in one report."""
    return f"{model}{PROBE_MARK}:{probe}" + (f"@{digest}" if digest else "")


def is_probe_judge(name: str | None) -> bool:
    return bool(name) and PROBE_MARK in str(name)


def probe_files(path: str | Path) -> tuple[Path, Path]:
    """(probe.safetensors, probe.json) of a probe directory or of a ``.safetensors`` file (its
    ``probe.json`` lies beside it); a missing file is a FileNotFoundError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"probe {path}: no such file or directory ({TRAIN_HINT})")
    tensors = path / PROBE_FILE if path.is_dir() else path
    meta = tensors.with_name(META_FILE)
    for f in (tensors, meta):
        if not f.is_file():
            raise FileNotFoundError(f"probe {path}: no {f} (a probe is {PROBE_FILE} + {META_FILE} in one directory; "
                                    f"{TRAIN_HINT})")
    return tensors, meta


@dataclass
class LinearProbe:
    """One logistic probe of a probe file: ``p_a(activations)`` is its P(answer A is correct)."""

    name: str
    layers: list[int]
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    digest: str | None = None  # the first 8 hex digits of the probe file's SHA-256

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> LinearProbe:
        """The probe ``name`` (default: the file's ``best``) of a probe directory or ``.safetensors`` file."""
        from safetensors.torch import load

        tensors_path, meta_path = probe_files(path)
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not JSON ({e})") from None
        where = str(meta_path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {meta.get('format_version')!r}, this version reads {FORMAT_VERSION}")
        missing = [k for k in ("model", "hidden_size", "num_layers", "layers", "prompt_sets", "probes") if k not in meta]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        probes = meta["probes"]
        chosen = str(name if name is not None else meta.get("best", ""))
        if chosen not in probes:
            raise ValueError(f"{where}: no probe {chosen!r}; it holds {sorted(probes)}"
                             + ("" if name is not None else " and names none as 'best'"))
        layers = [int(x) for x in probes[chosen]["layers"]]
        raw = tensors_path.read_bytes()
        tensors = load(raw)
        parts = {}
        for part in ("weight", "bias", "mean", "std"):
            key = f"{chosen}.{part}"
            if key not in tensors:
                raise ValueError(f"{tensors_path}: no tensor {key!r} (it holds {sorted(tensors)})")
            parts[part] = tensors[key].float()
        dim = len(layers) * int(meta["hidden_size"])
        shapes = {"weight": (dim,), "bias": (), "mean": (dim,), "std": (dim,)}
        for part, shape in shapes.items():
            if tuple(parts[part].shape) != shape:
                raise ValueError(f"{tensors_path}: {chosen}.{part} has shape {tuple(parts[part].shape)}, expected {shape} "
                                 f"({len(layers)} layer(s) x hidden size {meta['hidden_size']})")
        return cls(chosen, layers, meta=meta, path=str(path), digest=hashlib.sha256(raw).hexdigest()[:8], **parts)

    def p_a(self, activations: torch.Tensor) -> torch.Tensor:
        """P(A correct) [N] from activations [N, len(layers), H] (the probe's layers, in its order)."""
        return torch.sigmoid(self.logit(activations))

    def logit(self, activations: torch.Tensor) -> torch.Tensor:
        """weight · ((x - mean) / std) + bias, x the layers concatenated: the log-odds of A."""
        x = activations.float().reshape(activations.shape[0], -1)
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"probe {self.name!r}: activations of shape {tuple(activations.shape)} give "
                             f"{x.shape[1]} features, the probe takes {self.weight.shape[0]}")
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def check_model(self, model: str | None, hidden_size: int, num_layers: int, adapter: str | None = None) -> None:
        """Refuse (ValueError naming the mismatch) a model the probe was not trained on."""
        meta, where = self.meta, f"probe {self.path or self.name}"
        if model is None:
            raise ValueError(f"{where}: cannot tell which model the judge runs, so cannot check it is the probe's "
                             f"({meta['model']!r}); pass model=")
        if not _same_model(str(meta["model"]), model):
            raise ValueError(f"{where} was trained on model {meta['model']!r}, the judge runs {model!r}")
        for key, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if int(meta[key]) != int(value):
                raise ValueError(f"{where}: {key} {meta[key]} (model {meta['model']!r}), the judge's model has {value}")
        if "adapter" in meta and (meta["adapter"] or None) != (adapter or None):
            raise ValueError(f"{where} was trained with adapter {meta['adapter']!r}, the judge runs adapter {adapter!r}")
        layer_indices(self.layers, num_layers)

    def check_prompt_sets(self, prompt_sets: Iterable[str], where: str = "the tournament's formats") -> None:
        """Refuse judge chats rendered with prompt sets the probe never saw in training."""
        wanted, known = sorted(set(prompt_sets)), sorted(self.meta.get("prompt_sets", []))
        unknown = [p for p in wanted if p not in known]
        if unknown:
            raise ValueError(f"probe {self.path or self.name} was trained on judge chats of prompt set(s) {known}; "
                             f"{where} use {wanted} ({unknown} unseen)")


def _same_model(a: str, b: str) -> bool:
    """The same model as given in two configs: the same string, or paths to the same place."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class ProbeJudgeGenerator(Generator):
    """A judge ``Generator`` whose A/B log-probs come from a linear probe over ``generator``'s
    hidden states at the verdict position: ``choice_logprobs(chats, ["A", "B"])`` is
    [log p, log(1 - p)] with p = ``probe.p_a``. It writes no text (``generate`` raises).

    ``model`` is the judge model as its config gives it (``ModelSpec.path``, e.g. ``embedded``;
    default: the generator's ``path``); with ``adapter``, the probe's record must match it.
    """

    def __init__(self, generator: Generator, probe: LinearProbe, model: str | None = None,
                 adapter: str | None = None, name: str | None = None):
        if not isinstance(generator, LocalGenerator):
            raise ValueError(f"a probe judge reads hidden states, so it needs a local model (hf backend); "
                             f"{getattr(generator, 'name', generator)!r} is a {type(generator).__name__}")
        probe.check_model(model if model is not None else getattr(generator, "path", None),
                          generator.hidden_size, generator.num_layers, adapter)
        self.generator, self.probe = generator, probe
        self.name = name or probe_judge_name(generator.name, probe.name, probe.digest)

    def logits(self, chats: Sequence[Chat]) -> torch.Tensor:
        """The probe's log-odds of A for each judge chat, from one batched ``hidden_states`` call."""
        if not chats:
            return torch.empty(0)
        prompts = [self.generator.chat_ids(c) for c in chats]
        return self.probe.logit(self.generator.hidden_states(prompts, self.probe.layers))

    def choice_logprobs(self, chats: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        if len(choices) != 2:
            raise ValueError(f"a probe judge chooses between two answers, got choices {list(choices)}")
        z = self.logits(chats)
        # log sigmoid(z) and log sigmoid(-z), not log(p): exact where p rounds to 0 or 1.
        return torch.stack([F.logsigmoid(z), F.logsigmoid(-z)], dim=1).double().tolist()

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[Generation]:
        raise ProbeCannotWrite(f"{self.name} is a probe judge: it gives P(A) from activations and writes no text "
                               f"(use {self.generator.name!r} itself to generate)")

    def score(self, chats: Sequence[Chat], continuations: Sequence[str]) -> list[float]:
        raise ProbeCannotWrite(f"{self.name} is a probe judge: it scores only the choice between two answers")
