"""Work folders: the folder of an owner that is gone is removed by the next process on the host; one
whose owner holds its lock, one from another host, one holding a finished result, and one without a
lock file are kept; SIGTERM inside the work raises, and is held back around a rename."""

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
from hpcrag.util import workdirs
from hpcrag.util.workdirs import make_workdir, sigterm_held, stopped_by_sigterm


def _left(tmp_path: Path, name: str, lock: bool = True, finished: bool = False) -> Path:
    folder = tmp_path / name
    (folder / "shard-0000").mkdir(parents=True)
    if lock:
        folder.with_name(name + ".lock").touch()
    if finished:
        (folder / "manifest.json").write_text("{}")
    return folder


def test_only_a_gone_owners_unfinished_folder_on_this_host_is_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    gone = _left(tmp_path, f".index.building-0badc0de-999999@{host}")
    at_work = _left(tmp_path, f".index.building-0badc0df-{os.getpid()}@{host}")
    held = workdirs._take(at_work.with_name(at_work.name + ".lock"))  # its owner, alive
    elsewhere = _left(tmp_path, ".index.building-0badc0e0-999999@elsewhere.example")
    finished = _left(tmp_path, f".index.building-0badc0e1-999999@{host}", finished=True)
    other_purpose = _left(tmp_path, f".index.compacting-0badc0e2-999999@{host}")
    older = _left(tmp_path, ".index.building-0badc0e3", lock=False)  # an older hpcrag's: no lock file
    told: list[str] = []
    fresh = make_workdir(tmp_path / "index", "building", told.append, complete="manifest.json")
    assert held is not None
    os.close(held)
    assert not gone.exists() and not gone.with_name(gone.name + ".lock").exists()
    assert all(p.exists() for p in (at_work, elsewhere, finished, other_purpose, older))
    assert told == [
        f"left {older.name} alone: a work folder from an older hpcrag, which recorded no owner; delete it "
        "unless a build or compaction of index is running",
        f"removed {gone.name}, left behind by a process that is gone",
        f"kept {finished.name}: it holds a finished result whose rename into index was cut short; rename "
        "it to index or delete it",
    ]
    assert fresh.path.is_dir() and fresh.path.name.startswith(".index.building-")
    assert fresh.path.name.endswith(f"-{os.getpid()}@{host}")
    lock = fresh.path.with_name(fresh.path.name + ".lock")
    assert lock.exists() and workdirs._take(lock) is None  # held while the work runs
    fresh.release()
    assert not lock.exists()


def test_sigterm_inside_raises_a_clear_error_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopped = pytest.raises(HpcragError, match="the build of x was stopped by SIGTERM")
    with stopped, stopped_by_sigterm("the build of x"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_while_held_arrives_when_the_steps_are_done() -> None:
    steps: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: steps.append("SIGTERM"))
    try:
        with sigterm_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            steps.append("first rename")
            steps.append("second rename")
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps == ["first rename", "second rename", "SIGTERM"]


def test_a_build_stopped_by_sigterm_leaves_no_work_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "base.npy", rng.standard_normal((150_000, 32)).astype(np.float32))
    command = [sys.executable, "-m", "hpcrag", "index", "build", str(tmp_path / "base.npy"), "--out",
               str(tmp_path / "index"), "--nlist", "64", "--shards", "2", "--local", "hnsw"]  # fmt: skip
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert build.stdout is not None
    said = []
    for line in build.stdout:  # the work folder exists once the rows are being assigned
        said.append(line)
        if "assigning" in line:
            break
    build.send_signal(signal.SIGTERM)
    output = "".join(said) + build.communicate(timeout=120)[0]
    assert build.returncode == 1, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert not list(tmp_path.glob(".index*")) and not (tmp_path / "index").exists()
