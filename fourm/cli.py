"""The ``fourm`` command.

Each subsystem owns its subcommands in a ``commands`` module with a ``register(subparsers)``
function; this file only lists those modules, so the entry point stays small and each command's
options live next to the code they drive.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fourm.config import ConfigError

# Modules that add subcommands, in the order they appear in ``fourm --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "fourm.data.commands",  # fourm data shapes | show
    "fourm.vq.commands",  # fourm tokenizer train | train-text | eval, fourm tokenize
    "fourm.training.commands",  # fourm train
    "fourm.generation.commands",  # fourm generate
    "fourm.evaluation.commands",  # fourm eval
    "fourm.demo",  # fourm demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourm", description="Any-to-any multimodal masked modeling.")
    parser.add_argument("--version", action="version", version=f"fourm {importlib.import_module('fourm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileExistsError, FileNotFoundError) as e:
        # User-facing mistakes (a bad config key, an existing run, a missing file): one line, no traceback.
        print(f"fourm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
