"""The one base class of the mistakes a user can fix, and how the ``fourm`` command shows them.

A :class:`FourmError` is a bad input, setting, file or folder state: its message names the bad
value, what is allowed and how to fix it. The ``fourm`` command prints it as one line ``error:
...`` and exits with status 2, without a traceback (``FOURM_DEBUG=1`` shows the traceback too).
Anything else that escapes a command is a bug and keeps its traceback.

Each named error subclasses it next to the code that raises it and keeps a builtin base too, so
``except ValueError`` still catches ``ConfigError``::

    class ConfigError(FourmError, ValueError): ...           # fourm.config
    class CheckpointError(FourmError, ValueError): ...       # fourm.training.checkpoint
    class FolderLockedError(FourmError, RuntimeError): ...   # fourm.locking

An error raised inside a DataLoader worker reaches the main process re-wrapped by torch, with the
worker's traceback in its message; :func:`user_error_message` recognises a wrapped
:class:`FourmError` by its class name and returns its own message only.
"""
from __future__ import annotations

import os

DEBUG_ENV = "FOURM_DEBUG"
_NAMES: set[str] = set()  # qualified names of every FourmError subclass (for wrapped worker errors)
_WORKER_MARK = "Original Traceback (most recent call last):"


class FourmError(Exception):
    """A mistake the user can fix; the ``fourm`` command prints its message as one line, exit status 2."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _NAMES.update({cls.__name__, f"{cls.__module__}.{cls.__qualname__}"})


_NAMES.update({FourmError.__name__, f"{FourmError.__module__}.{FourmError.__qualname__}"})


class UsageError(FourmError, ValueError):
    """A command-line option or input that is not allowed (the message names it)."""


# Mistakes about files and folders that the standard library names well enough (the message holds
# the path): a missing input, an output that is a file, a folder the user may not write.
FILE_ERRORS: tuple[type[Exception], ...] = (
    FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user mistake, or None when ``error`` is a bug (or an interrupt).

    Args:
        error: an exception that escaped a command.

    Returns:
        ``str(error)`` on one line for a :class:`FourmError` or one of :data:`FILE_ERRORS`; for a
        FourmError re-raised from a DataLoader worker, the original message without the worker's
        traceback; None otherwise.
    """
    if isinstance(error, (FourmError, *FILE_ERRORS)):
        return " ".join(str(error).split("\n")).strip() or type(error).__name__
    text = str(error)
    if _WORKER_MARK in text:  # "Caught X in DataLoader worker process 0.\nOriginal Traceback ...\nmod.X: message"
        last = text.rstrip().rsplit("\n", 1)[-1]
        name, sep, message = last.partition(": ")
        if sep and name in _NAMES:
            return message.strip()
    return None


def debug_enabled() -> bool:
    """Whether ``FOURM_DEBUG`` asks for tracebacks of user mistakes too (any value but '', '0')."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
