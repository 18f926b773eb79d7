"""Daemons known by pid file: is it alive, stop it, find strays that belong to a run directory."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None, name: str | None = None) -> bool:
    """True if `pid` runs (and, when `name` is given, its command name starts with it)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if name is None:
        return True
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm.startswith(name[:15])


def running_pid(pid_file: Path, name: str) -> int | None:
    pid = read_pid(pid_file)
    return pid if alive(pid, name) else None


def stop(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM the processes, wait, then SIGKILL whatever is left."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)


def processes_of(run_dir: Path) -> list[int]:
    """Processes whose command line or environment names `run_dir`: our daemons and job steps.

    Job steps (slurmstepd and the user processes under it) carry SLURM_CONF in their environment,
    which is how we find them after their slurmd is gone.
    """
    marker = str(run_dir).encode()
    spared = _ancestors()
    return [
        pid
        for pid, cmdline, environ in process_table()
        if pid not in spared and (marker in cmdline or (b"SLURM_CONF=" + marker) in environ)
    ]


def process_table() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, command line, environment) of every process we may read, NUL-separated as in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
        except OSError:
            continue


def _ancestors() -> set[int]:
    """This process and its parents: a shell that exported SLURM_CONF must not be swept."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
