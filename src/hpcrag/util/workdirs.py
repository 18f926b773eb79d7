"""Hidden work folders beside what they will replace, named for the process that owns them.

A build writes into `.{name}.{purpose}-{token}-{pid}@{host}` and renames it into place when done. If
the owner dies without cleaning up (SIGKILL after a time limit's grace, a lost node), the next
process making such a folder on the same host sees that the owner is gone and removes it. SIGTERM
(a Slurm time limit, `scancel`) is turned into an exception while the work runs, so the owner's own
clean-up runs instead of leaving the folder behind.
"""

from __future__ import annotations

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


def make_workdir(dest: Path, purpose: str, say: Callable[[str], None] = lambda message: None) -> Path:
    """A new hidden sibling of `dest`, after removing those of the same purpose whose owner on this
    host is gone (each removal told to `say`)."""
    for left in abandoned_workdirs(dest, purpose):
        shutil.rmtree(left, ignore_errors=True)
        say(f"removed {left.name}, left by an earlier {purpose} whose process is gone")
    workdir = (
        dest.parent / f".{dest.name}.{purpose}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"
    )
    workdir.mkdir(parents=True)
    return workdir


def abandoned_workdirs(dest: Path, purpose: str) -> list[Path]:
    """Work folders of `dest` for `purpose` whose owning process ran on this host and is gone."""
    if not dest.parent.is_dir():
        return []
    prefix = f".{dest.name}.{purpose}-"
    host = socket.gethostname()
    left = []
    for path in dest.parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        owner = path.name[len(prefix) :].partition("-")[2]  # after the token: pid@host
        pid, _, owner_host = owner.partition("@")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            left.append(path)
    return sorted(left)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def stopped_by_sigterm(what: str) -> Iterator[None]:
    """While inside, SIGTERM raises an HpcragError naming `what`, so that clean-up code on the way
    out runs. Outside the main thread (where Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
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
        signal.signal(signal.SIGTERM, previous)
