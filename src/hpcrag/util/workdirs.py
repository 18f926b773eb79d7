"""Hidden work folders beside what they will replace, each held by a live owner.

A build writes into `.{name}.{purpose}-{token}-{pid}@{host}` and renames it into place when done.
While it works, its owner holds an exclusive lock (flock) on the sibling file `<folder>.lock`, taken
before the folder exists, so a folder whose lock can be taken is one whose owner is gone (killed
after a time limit's grace, a lost node): the next process making such a folder on the same host
removes it. The lock decides, not the pid, which processes in other PID namespaces (containers on
one host) cannot see; and since locks on a file system shared by several hosts may be each host's
own, a folder made on another host is never touched. One that holds a finished result (its
`complete` file: a rename cut short) is kept and named, for a person to rename or delete.

SIGTERM (a Slurm time limit, `scancel`) is turned into an exception while the work runs, so that the
owner cleans up; and it is held back while the result is renamed into place, so that a rename pair
is never cut in half. Python runs the handler only between its own steps: a long native call (faiss
training) delays it, and under MPI a rank blocked in a collective may be killed first. So the
clean-up on SIGTERM is best effort, and the lock covers the rest.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hpcrag.errors import HpcragError

LOCK_SUFFIX = ".lock"


class WorkFolder:
    """A work folder and its owner's lock, held until `release()` (after the folder is renamed
    into place, or removed)."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self._lock: int | None = lock

    def release(self) -> None:
        if self._lock is None:
            return
        _lock_path(self.path).unlink(missing_ok=True)
        os.close(self._lock)
        self._lock = None


def make_workdir(
    dest: Path, purpose: str, say: Callable[[str], None] = lambda message: None, complete: str | None = None
) -> WorkFolder:
    """A new hidden sibling of `dest`, locked by this process, after clearing the ones of the same
    purpose whose owner on this host is gone (each removal or keeping told to `say`)."""
    _sweep(dest, purpose, say, complete)
    path = dest.parent / f".{dest.name}.{purpose}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = _take(_lock_path(path))
    if lock is None:  # a fresh random name: nobody else can hold it
        raise HpcragError(f"could not lock {_lock_path(path)}: another process holds it")
    try:
        path.mkdir()
    except BaseException:
        WorkFolder(path, lock).release()
        raise
    return WorkFolder(path, lock)


def _sweep(dest: Path, purpose: str, say: Callable[[str], None], complete: str | None = None) -> None:
    """Remove the work folders of `dest` for `purpose` that were made on this host by an owner that is
    gone; keep (and name) those holding a finished result."""
    if not dest.parent.is_dir():
        return
    prefix = f".{dest.name}.{purpose}-"
    host = socket.gethostname()
    for older in sorted(dest.parent.glob(f"{glob.escape(prefix)}*")):
        if older.is_dir() and "@" not in older.name[len(prefix) :]:  # from before owners and locks
            say(
                f"left {older.name} alone: a work folder from an older hpcrag, which recorded no owner; "
                f"delete it unless a build or compaction of {dest.name} is running"
            )
    for lock_path in sorted(dest.parent.glob(f"{glob.escape(prefix)}*{LOCK_SUFFIX}")):
        folder = lock_path.with_name(lock_path.name[: -len(LOCK_SUFFIX)])
        if folder.name.rpartition("@")[2] != host:
            continue
        lock = _take(lock_path)
        if lock is None:  # its owner is at work
            continue
        try:
            if complete is not None and (folder / complete).is_file():
                say(
                    f"kept {folder.name}: it holds a finished result whose rename into {dest.name} was cut "
                    f"short; rename it to {dest.name} or delete it"
                )
                continue
            shutil.rmtree(folder, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            say(f"removed {folder.name}, left behind by a process that is gone")
        finally:
            os.close(lock)


def _take(lock_path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `lock_path` (made if missing), or None if
    another process holds it (or the file system cannot lock: then nothing is assumed gone)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK_SUFFIX)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stopped_by_sigterm(what: str) -> Iterator[None]:
    """While inside, SIGTERM raises an HpcragError naming `what`, so that clean-up code on the way
    out runs. Outside the main thread (where Python cannot set handlers) nothing changes."""
    if not _main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise HpcragError(
            f"{what} was stopped by SIGTERM (a Slurm time limit or scancel): nothing was replaced"
        )

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        # None: a handler installed outside Python, which cannot be put back; the default stands in.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def sigterm_held() -> Iterator[None]:
    """While inside, SIGTERM is only noted, and delivered on leaving (to the handler in place then):
    for steps that must not be cut in half, such as the two renames that swap a result into place."""
    if not _main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)
