"""The ``fourm`` command.

Each subsystem owns its subcommands in a ``commands`` module with a ``register(subparsers)``
function; this file only lists those modules, so the entry point stays small and each command's
options live next to the code they drive. A group of subcommands that several modules fill
(``fourm tokenizer train`` is the trainer's, ``fourm tokenizer eval`` the evaluation's) comes from
:func:`command_group`.

Every mistake a user can fix (a :class:`fourm.errors.FourmError`, a missing file, a bad option)
ends the command with one line ``error: ...`` on stderr and exit status 2, without a traceback;
``FOURM_DEBUG=1`` prints the traceback too (:func:`run_command`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Callable

from fourm.errors import debug_enabled, user_error_message


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``error: PROG: message (see PROG --help)``, exit status 2
    (subcommand parsers inherit the class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

# Modules that add subcommands, in the order they appear in ``fourm --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "fourm.data.commands",  # fourm data shapes | show, fourm tokenize
    "fourm.training.commands",  # fourm train, fourm curve, fourm tokenizer train | train-text
    "fourm.generation.commands",  # fourm generate
    "fourm.evaluation.commands",  # fourm eval, fourm tokenizer eval
    "fourm.evaluation.demo",  # fourm demo
)


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of group ``name`` (``fourm NAME SUBCOMMAND``), created on first use."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        group.required = True
        parser.set_defaults(_subcommands=group)
    return parser.get_default("_subcommands")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fourm", description="Any-to-any multimodal masked modeling.")
    parser.add_argument("--version", action="version", version=f"fourm {importlib.import_module('fourm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand; a user's mistake becomes one line ``error: ...`` and exit status 2.

    Anything that is not a user's mistake (:func:`fourm.errors.user_error_message` returns None)
    is a bug and propagates with its traceback.
    """
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        if debug_enabled():
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
