"""``python -m waltzlit fit|validate --config conf/X.yaml`` (training, LightningCLI), and
``python -m waltzlit evaluate|chat|serve ...`` (evaluation and deployment), and
``python -m waltzlit plan`` (memory per device of a training configuration), and
``python -m waltzlit convert-gguf`` (a GGUF checkpoint to a Hugging Face folder)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "evaluate": "waltzlit.evaluation.cli",
    "chat": "waltzlit.deploy.chat",
    "serve": "waltzlit.deploy.server",
    "convert-gguf": "waltzlit.agents.gguf",
    "plan": "waltzlit.plan",
}
"""Subcommands outside LightningCLI, and the module whose ``main(args)`` runs each."""


def main(argv: list[str] | None = None) -> int | None:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[words[0]]).main(words[1:])
    if words[:1] in (["-h"], ["--help"]):
        print("Also: evaluate, chat, serve, plan, convert-gguf (python -m waltzlit evaluate --help). Training subcommands:\n")
    from waltzlit.cli import main as lightning_main

    lightning_main(argv)  # None: LightningCLI reads sys.argv itself, exactly as before
    return None


if __name__ == "__main__":
    sys.exit(main())
