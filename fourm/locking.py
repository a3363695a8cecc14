"""One writer per output folder: an exclusive lock file that names its holder.

``fourm train``, ``fourm tokenizer train``, ``fourm data shapes`` and ``fourm tokenize`` hold
``OUT/.fourm.lock`` while they write ``OUT``::

    with FolderLock(out_dir, "fourm train"):
        ...                                   # a second writer gets FolderLockedError naming our pid

The lock is an advisory ``flock`` on the file, which the kernel drops when its holder dies, so a
lock left behind by a killed process (its pid no longer runs) is taken over by the next writer.
The file holds the holder's pid, host, command and start time for the error message, and is
removed on release. Where ``flock`` is missing (Windows, some network file systems) the file is
created exclusively instead and a lock whose pid no longer runs on this host is taken over.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from fourm.errors import FourmError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
LOCK_NAME = ".fourm.lock"


class FolderLockedError(FourmError, RuntimeError):
    """Another process writes to the folder (its pid is in the message)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a pid we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(folder: str | os.PathLike) -> dict:
    """What the lock file of ``folder`` says about its holder (``{}`` when absent or unreadable)."""
    try:
        holder = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing) for one writing command.

    Args:
        folder: the output folder.
        command: what writes there, for the other writer's error message (``"fourm train"``).
        setting: the option or setting that chose the folder, named in the error (``"out_dir"``).

    Use it as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, folder: str | os.PathLike, command: str, setting: str = "output folder") -> None:
        self.folder, self.command, self.setting = Path(folder), command, setting
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._owner = 0  # pid that took the lock: a forked child (a DataLoader worker) never removes it

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock.

        Raises:
            FolderLockedError: another live process holds it.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when the holder removed the file between open and lock
            fd = self._open_locked() if fcntl is not None else self._create_exclusive()
            if fd is not None:
                break
        else:
            raise self._locked_error(read_holder(self.folder))
        stale = read_holder(self.folder)
        if stale.get("pid") and stale.get("pid") != os.getpid():
            logger.info("%s: taking over the lock of pid %s, which no longer holds it", self.folder, stale["pid"])
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300] or self.command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd, self._owner = fd, os.getpid()
        return self

    def _open_locked(self) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._locked_error(read_holder(self.folder)) from None
            raise
        try:  # the holder may have removed the file after we opened it: lock the file at the path
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def _create_exclusive(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_holder(self.folder)
            pid = holder.get("pid")
            if isinstance(pid, int) and holder.get("host") == socket.gethostname() and not pid_alive(pid):
                self.path.unlink(missing_ok=True)  # a stale lock: its process is gone
                return None
            raise self._locked_error(holder) from None

    def _locked_error(self, holder: dict) -> FolderLockedError:
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        since = f" since {holder['since']}" if holder.get("since") else ""
        cmd = f" ({holder['command']})" if holder.get("command") else ""
        return FolderLockedError(
            f"{self.folder} is locked by another writer: {who}{since}{cmd}; wait for it to finish or choose another "
            f"{self.setting} (if that process is gone, delete {self.path})")

    def release(self) -> None:
        """Give the lock back and remove the lock file (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.getpid() == self._owner:  # first: a process that opens the old file then sees it gone
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # in a forked child this closes its copy only; the owner keeps the lock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock (e.g. a Trainer never closed) does not outlive its object
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
