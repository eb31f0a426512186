"""Probe files written by hand in the spec's format (what ``fit --config configs/probe.yaml``
writes), for the probe tests. Imported as ``probe_files`` (tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_probe(directory: Path, model: str, hidden: int, num_layers: int, layers: Sequence[int] = (-1, 0),
                seed: int = 0, prompt_sets: Sequence[str] = ("debate",), **meta_overrides) -> Path:
    """One random probe per layer plus one over the layers concatenated ("concat", named best)."""
    g = torch.Generator().manual_seed(seed)
    probes = {str(layer): [layer] for layer in layers} | {"concat": list(layers)}
    tensors = {}
    for name, ls in probes.items():
        dim = len(ls) * hidden
        tensors[f"{name}.weight"] = torch.randn(dim, generator=g) / dim**0.5
        tensors[f"{name}.bias"] = torch.tensor(0.1)
        tensors[f"{name}.mean"] = torch.randn(dim, generator=g) * 0.1
        tensors[f"{name}.std"] = torch.rand(dim, generator=g) + 0.5
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "probe.safetensors"))
    meta = {"model": model, "model_name": Path(model).name, "hidden_size": hidden, "num_layers": num_layers,
            "layers": list(layers), "prompt_sets": sorted(prompt_sets),
            "probes": {name: {"layers": ls} for name, ls in probes.items()}, "best": "concat",
            "val": {name: {"auroc": 0.5, "accuracy": 0.5, "ece": 0.1, "brier": 0.25} for name in probes},
            "format_version": 1, **meta_overrides}
    (directory / "probe.json").write_text(json.dumps(meta))
    return directory


def write_store(path: Path, x: torch.Tensor, labels: list[int], stories: list[str], layers=(-1, -2, -3),
                formats: Sequence[str] | None = None, **header) -> Path:
    """An activation store of rows ``x`` [N, len(layers), H] (header.json, index.jsonl, one shard), as
    the activations command writes it; ``formats``: each row's format name (default: all debate)."""
    path.mkdir(parents=True, exist_ok=True)
    head = {"model": "embedded", "model_name": "smollm2-135m", "adapter": None, "hidden_size": int(x.shape[-1]),
            "num_layers": 30, "layers": list(layers), "prompt_sets": ["debate"], "dtype": "float32",
            "format_version": 1, **header}
    (path / "header.json").write_text(json.dumps(head))
    if len(labels):
        save_file({"activations": x.float().contiguous()}, str(path / "shard-00000.safetensors"))
    with (path / "index.jsonl").open("w") as f:
        for i, (label, story) in enumerate(zip(labels, stories)):
            name = formats[i] if formats else "debate"
            f.write(json.dumps({"row": i, "shard": "shard-00000.safetensors", "offset": i, "round_id": f"r{i // 2}",
                                "order": i % 2, "question_id": f"q{i // 2}", "story_id": story, "split": "train",
                                "format": name.rstrip("01"), "format_name": name, "label": label,
                                "judge_p_a": 0.5 + 0.1 * (label - 0.5), "source": "rounds"}) + "\n")
    return path
