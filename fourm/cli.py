"""The ``fourm`` command.

Each subsystem owns its subcommands in a ``commands`` module with a ``register(subparsers)``
function; this file only lists those modules, so the entry point stays small and each command's
options live next to the code they drive. A group of subcommands that several modules fill
(``fourm tokenizer train`` is the trainer's, ``fourm tokenizer eval`` the evaluation's) comes from
:func:`command_group`.

Library messages go through :mod:`logging` (fourm's at INFO, other libraries' at WARNING); ``-v``
(fourm DEBUG, others INFO), ``-vv`` (everything DEBUG) and ``-q`` (errors only) change that, before
or after the subcommand (``fourm -v train ...`` or ``fourm train ... -v``).

Every mistake a user can fix (a :class:`fourm.errors.FourmError`, a missing file, a bad option)
ends the command with one line ``error: ...`` on stderr and exit status 2, without a traceback;
``FOURM_DEBUG=1`` prints the traceback too (:func:`run_command`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

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


T = TypeVar("T")
# The trained assets a fourm checkout ships, relative to its root. The package does not contain them:
# a command run from the checkout finds them, anywhere else --model / --tokenizers name them.
BUNDLED_MODEL = "models/shapes_bundled"
BUNDLED_TOKENIZERS = "tokenizers/shapes64"


def bundled_default(given: str | None, flag: str, default: str) -> str:
    """What ``flag`` names: ``given`` as is (a folder or a Hub repo id) or, when it was left out,
    ``default`` (``BUNDLED_MODEL``, ``BUNDLED_TOKENIZERS``) in the working directory.

    Raises:
        FileNotFoundError: ``flag`` was left out and the working directory is not a fourm checkout;
            the one-line message says which flag to pass.
    """
    if given is not None:
        return given
    if Path(default).is_dir():
        return default
    raise FileNotFoundError(f"{flag} not given and ./{default} does not exist here ({Path.cwd()}); run from a fourm "
                            f"checkout or pass {flag} FOLDER_OR_HUB_REPO_ID")


def for_flag(flag: str, load: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``load(*args, **kwargs)``, with a missing file or folder reported as ``"{flag} <message>"``."""
    try:
        return load(*args, **kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{flag} {str(e).strip(chr(39))}") from None


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of group ``name`` (``fourm NAME SUBCOMMAND``), created on first use."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        group.required = True
        parser.set_defaults(_subcommands=group)
    return parser.get_default("_subcommands")


def _finish(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` / ``-q`` on ``parser`` and, recursively, on its subcommands (where they do not
    overwrite what was given before the subcommand); a subcommand without a description shows its
    help line as one."""
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="more log messages: -v (fourm DEBUG, other libraries INFO), -vv (all DEBUG)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="log errors only")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for verb, sub in action.choices.items():
                if not sub.description and helps.get(verb):
                    sub.description = helps[verb][0].upper() + helps[verb][1:] + "."
                _finish(sub, top=False)


def configure_logging(verbosity: int) -> None:
    """Send log records to stderr: fourm's from INFO and other libraries' from WARNING at
    ``verbosity`` 0; DEBUG / INFO at 1; all DEBUG at 2 or more; errors only below 0."""
    fourm_level, root_level = ((logging.ERROR, logging.ERROR) if verbosity < 0 else (logging.INFO, logging.WARNING)
                               if verbosity == 0 else (logging.DEBUG, logging.INFO) if verbosity == 1
                               else (logging.DEBUG, logging.DEBUG))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(root_level)
    logging.getLogger("fourm").setLevel(fourm_level)


def build_parser() -> argparse.ArgumentParser:
    """The ``fourm`` parser with every registered subcommand."""
    parser = Parser(prog="fourm", description="Any-to-any multimodal masked modeling.")
    parser.add_argument("--version", action="version", version=f"fourm {importlib.import_module('fourm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    _finish(parser, top=True)
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
    """Run the ``fourm`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
