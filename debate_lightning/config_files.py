"""Find the YAML a ``--config`` names: a file in the working directory, else a shipped config.

The configs ship inside the package (``debate_lightning/configs/``, package data), so after a
``pip install`` there is no ``configs/`` directory beside the user. ``fit --config dpo.yaml``
and ``tournament --config tournament`` then mean the shipped file, and the CLI says so on stderr
(one line), because a silently swapped config is the worst kind of surprise. A file that exists
where the user is always wins. Both CLIs (``cli.py`` for fit/validate/test and
``tournament/cli.py``) rewrite their ``--config`` values through :func:`resolve_config_args`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import yaml

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
YAML_SUFFIXES = (".yaml", ".yml")


class ConfigNotFound(FileNotFoundError):
    """A ``--config`` value that is neither a file nor the name of a shipped config."""


def shipped_configs() -> list[str]:
    """Names of the shipped configs, relative to ``debate_lightning/configs`` (``dpo.yaml``, ...)."""
    if not SHIPPED_CONFIGS.is_dir():
        return []
    return sorted(p.relative_to(SHIPPED_CONFIGS).as_posix() for p in SHIPPED_CONFIGS.rglob("*.y*ml"))


def resolve_config(value: str) -> tuple[str, bool]:
    """``(path, shipped)`` for one ``--config`` value.

    An existing file is returned unchanged (``shipped`` False). Otherwise the value names a
    shipped config: ``dpo.yaml``, ``dpo``, ``strategies/fsdp.yaml``, or ``configs/dpo.yaml`` as
    the README writes it from a checkout. An inline YAML mapping (``--config '{trainer: ...}'``,
    which jsonargparse accepts) passes through. Anything else raises :class:`ConfigNotFound`
    listing the shipped configs.
    """
    if Path(value).expanduser().is_file():
        return value, False
    for candidate in _candidates(value):
        path = SHIPPED_CONFIGS / candidate
        if path.is_file():
            return str(path), True
    if _is_inline_mapping(value):
        return value, False
    names = shipped_configs()
    listing = ", ".join(names) if names else f"none found in {SHIPPED_CONFIGS}"
    raise ConfigNotFound(
        f"--config {value}: no such file in {Path.cwd()} and no shipped config of that name; "
        f"shipped configs: {listing}"
    )


def _candidates(value: str) -> list[str]:
    name = Path(value)
    if name.is_absolute() or ".." in name.parts or not name.parts:
        return []
    names = [name]
    if name.parts[0] == "configs" and len(name.parts) > 1:  # `configs/dpo.yaml` from outside a checkout
        names.append(Path(*name.parts[1:]))
    out = []
    for n in names:
        out.append(n.as_posix())
        if n.suffix not in YAML_SUFFIXES:
            out.append(n.as_posix() + ".yaml")
    return out


def _is_inline_mapping(value: str) -> bool:
    try:
        return isinstance(yaml.safe_load(value), dict)
    except yaml.YAMLError:
        return False


def resolve_config_args(
    argv: Sequence[str], options: Sequence[str] = ("--config",), log: TextIO | None = None
) -> list[str]:
    """``argv`` with every ``--config`` value (``--config X`` and ``--config=X``, any number of
    times) resolved by :func:`resolve_config`; each shipped config used is named on ``log``
    (stderr by default) in one line."""
    log = sys.stderr if log is None else log
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        option, eq, value = arg.partition("=")
        if option in options and eq:
            out.append(f"{option}={_resolved(value, log)}")
        elif arg in options and i + 1 < len(argv):
            out += [arg, _resolved(argv[i + 1], log)]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def _resolved(value: str, log: TextIO) -> str:
    path, shipped = resolve_config(value)
    if shipped:
        print(f"config: {value} is not a file here; using the shipped {path}", file=log)
    return path
