"""Small waits used by integration tests (bounded, so a broken cluster fails instead of hanging)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hpcrag.slurm.target import SlurmTarget

T = TypeVar("T")


def eventually(probe: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f}s (last: {value!r})")
        time.sleep(0.5)


def job_state(target: SlurmTarget, job_id: str) -> str:
    out = target.squeue("-h", "-o", "%T", f"--jobs={job_id}")
    return out.strip()


def sbatch_wrap(target: SlurmTarget, *args: str) -> str:
    out = target.sbatch("--parsable", "--output=/dev/null", *args)
    return out.strip().split(";")[0]
