"""``merge-adapter``: fold a PEFT (LoRA) adapter into its base model, as one safetensors checkpoint.

The merged directory (weights, config, tokenizer and chat template) is a plain transformers
checkpoint, so every backend loads it without peft: ``models: {x: {path: DIR}}`` in a tournament,
``--model DIR`` for the probe and activations commands, a vLLM server's ``--model DIR``. A
``merged_from.json`` beside it records the base model and adapter it came from.

The adapter must have been made for ``--model``: peft's ``adapter_config.json`` names its base
(``base_model_name_or_path``), and a different one is refused rather than merged into weights it
was never trained with. The embedded model is recognised under every name it goes by (``embedded``,
its cache directory on this machine or another).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from debate_lightning.models.embedded import CACHE_NAME, EMBEDDED, resolve

ADAPTER_CONFIG = "adapter_config.json"
PROVENANCE = "merged_from.json"


class MergeError(ValueError):
    """A merge the inputs do not allow; the message names the argument at fault."""


def _names_embedded(name: str) -> bool:
    return name == EMBEDDED or Path(name).name == CACHE_NAME


def same_base(adapter_base: str, model: str) -> bool:
    """Whether the base an adapter names is the model given: the same string, the same directory,
    or the embedded model under any of its names."""
    if adapter_base == model:
        return True
    if _names_embedded(adapter_base) and _names_embedded(str(model)):
        return True
    a, m = Path(adapter_base).expanduser(), Path(str(resolve(model))).expanduser()
    return a.exists() and m.exists() and a.resolve() == m.resolve()


def adapter_base(adapter: str | Path) -> str | None:
    """The base model an adapter directory names, after checking that it is a PEFT adapter."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise MergeError(f"--adapter {adapter}: no such directory")
    config_path = adapter / ADAPTER_CONFIG
    if not config_path.is_file():
        raise MergeError(f"--adapter {adapter}: not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MergeError(f"--adapter {config_path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise MergeError(f"--adapter {config_path}: expected a JSON object")
    return config.get("base_model_name_or_path") or None


def check_output(output: str | Path, force: bool) -> Path:
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MergeError(f"--output {output} is a file, not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise MergeError(f"--output {output} exists and is not empty; choose another directory or pass --force "
                         "to replace it")
    return output


def merge_adapter(model: str, adapter: str | Path, output: str | Path, dtype: str = "float32",
                  force: bool = False) -> Path:
    """Merge ``adapter`` into ``model`` and write the result to ``output``; returns ``output``.

    The checkpoint is written to a temporary sibling of ``output`` and renamed into place, so a
    kill leaves no half checkpoint; with ``force`` an existing ``output`` is replaced only then.
    """
    base = adapter_base(adapter)
    if base is not None and not same_base(base, model):
        raise MergeError(f"--adapter {adapter} was made for base model {base!r} (its {ADAPTER_CONFIG}), "
                         f"not for --model {model!r}; pass --model {base}")
    output = check_output(output, force)
    for name, path in (("--adapter", Path(adapter)), ("--model", Path(str(resolve(model))))):
        if path.exists() and output.resolve() in (path.resolve(), *path.resolve().parents):
            raise MergeError(f"--output {output} would overwrite {name} {path}")

    from peft import PeftModel

    from debate_lightning.models.loading import load_model_and_tokenizer

    base_model, tokenizer = load_model_and_tokenizer(model, dtype=dtype, device="cpu")
    try:
        peft_model = PeftModel.from_pretrained(base_model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:  # shapes or module names of another model
        raise MergeError(f"--adapter {adapter} does not fit --model {model}: {str(e).splitlines()[0]}") from e
    merged = peft_model.merge_and_unload()
    merged.config._name_or_path = str(output)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        provenance: dict[str, Any] = {"model": str(model), "adapter": str(Path(adapter).resolve()),
                                      "adapter_base": base, "dtype": dtype}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m debate_lightning merge-adapter",
        description="Merge a PEFT adapter into its base model and write a safetensors checkpoint "
        "(model + tokenizer) that every backend loads as a plain model directory.",
    )
    p.add_argument("--model", default=EMBEDDED, help="the adapter's base model: embedded, a directory or a hub id")
    p.add_argument("--adapter", required=True, help="the PEFT adapter directory (adapter_config.json + weights)")
    p.add_argument("--output", required=True, help="where to write the merged checkpoint (a new or empty directory)")
    p.add_argument("--dtype", default="float32", help="dtype of the merged weights (float32, bfloat16, float16)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists and is not empty")
    return p


def merge_adapter_main(argv: list[str] | None = None) -> int:
    """The ``merge-adapter`` command; 2 on a user error."""
    args = _parser().parse_args(argv)
    try:
        out = merge_adapter(args.model, args.adapter, args.output, dtype=args.dtype, force=args.force)
    except (ValueError, OSError) as e:  # MergeError, a bad --dtype, an unreadable file
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {args.adapter} into {args.model}: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(merge_adapter_main())
