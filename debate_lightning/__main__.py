"""``python -m debate_lightning <command>``.

fit / validate / test go to LightningCLI (cli.py); the other commands have their own small CLIs.
Imports are lazy so ``data`` or ``report`` do not pay for importing Lightning.
"""

from __future__ import annotations

import os
import sys

COMMANDS = {
    "fit": "debate_lightning.cli:cli_main",
    "validate": "debate_lightning.cli:cli_main",
    "test": "debate_lightning.cli:cli_main",
    "data": "debate_lightning.data.loading:data_main",
    "tournament": "debate_lightning.tournament.cli:tournament_main",
    "report": "debate_lightning.tournament.cli:report_main",
    "merge": "debate_lightning.tournament.cli:merge_main",
    "rejudge": "debate_lightning.tournament.cli:rejudge_main",
    "activations": "debate_lightning.tournament.activations:activations_main",
    "probe-table": "debate_lightning.training.probe_table:probe_table_main",
    "serve": "debate_lightning.serve:serve_main",
    "merge-adapter": "debate_lightning.models.merge:merge_adapter_main",
    "study": "debate_lightning.study.cli:study_main",
    "curves": "debate_lightning.training.curves:curves_main",
}

USAGE = "usage: python -m debate_lightning {" + ",".join(COMMANDS) + "} [options]   (-h after a command for its help)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A hub id hangs ~50 s before failing without network; local paths and `embedded` need no hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[command].split(":")
    import importlib

    func = getattr(importlib.import_module(module_name), func_name)
    if module_name == "debate_lightning.cli":
        return func([command, *rest]) or 0
    return func(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
