"""Work folders: a killed owner's folder is removed by the next process on the host, a living or
foreign owner's is kept, and SIGTERM inside the work raises so that clean-up runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.util.workdirs import abandoned_workdirs, make_workdir, stopped_by_sigterm


def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_owners_folder_is_removed_and_others_are_kept(tmp_path: Path) -> None:
    dest = tmp_path / "index"
    host = socket.gethostname()
    dead = tmp_path / f".index.building-0badc0de-{_gone_pid()}@{host}"
    living = tmp_path / f".index.building-0badc0df-{os.getpid()}@{host}"
    foreign = tmp_path / f".index.building-0badc0e0-{_gone_pid()}@elsewhere.example"
    other_purpose = tmp_path / f".index.compacting-0badc0e1-{_gone_pid()}@{host}"
    unowned = tmp_path / ".index.building-0badc0e2"  # an older hpcrag's name: no owner to ask
    for folder in (dead, living, foreign, other_purpose, unowned):
        (folder / "shard-0000").mkdir(parents=True)
    assert abandoned_workdirs(dest, "building") == [dead]
    told: list[str] = []
    fresh = make_workdir(dest, "building", told.append)
    assert fresh.is_dir() and fresh.name.endswith(f"-{os.getpid()}@{host}")
    assert fresh.name.startswith(".index.building-")
    assert not dead.exists() and all(p.exists() for p in (living, foreign, other_purpose, unowned))
    assert told == [f"removed {dead.name}, left by an earlier building whose process is gone"]
    assert abandoned_workdirs(tmp_path / "absent" / "index", "building") == []


def test_sigterm_inside_raises_a_clear_error_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopped = pytest.raises(HpcragError, match="the build of x was stopped by SIGTERM")
    with stopped, stopped_by_sigterm("the build of x"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_build_stopped_by_sigterm_leaves_no_work_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "base.npy", rng.standard_normal((60_000, 32)).astype(np.float32))
    command = [sys.executable, "-m", "hpcrag", "index", "build", str(tmp_path / "base.npy"), "--out",
               str(tmp_path / "index"), "--nlist", "64", "--shards", "2", "--local", "hnsw"]  # fmt: skip
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".index.building-*")) and time.monotonic() < deadline:
        assert build.poll() is None, build.stdout.read() if build.stdout else ""
        time.sleep(0.01)
    build.send_signal(signal.SIGTERM)
    output, _ = build.communicate(timeout=120)
    assert build.returncode == 1, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert not list(tmp_path.glob(".index*")) and not (tmp_path / "index").exists()
