"""The ``fourm`` command.

Each subsystem owns its subcommands in a ``commands`` module with a ``register(subparsers)``
function; this file only lists those modules, so the entry point stays small and each command's
options live next to the code they drive.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands, in the order they appear in ``fourm --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "fourm.data.commands",  # fourm data shapes | show
    "fourm.vq.commands",  # fourm tokenizer train | eval, fourm tokenize
    "fourm.demo",  # fourm demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourm", description="Any-to-any multimodal masked modeling.")
    parser.add_argument("--version", action="version", version=f"fourm {importlib.import_module('fourm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:  # TODO(dev): remove once every listed module exists
            if e.name != mod:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
