"""Small waits used by integration tests (bounded, so a broken cluster fails instead of hanging)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hpcrag.slurm.command import run_command
from hpcrag.slurm.target import SlurmTarget

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


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


def mpirun(ranks: int, *command: str) -> str:
    """Run `command` as `ranks` local MPI ranks (one thread each), outside any resource manager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_"))}
    env.update(OMPI_MCA_plm="isolated", PYTHONPATH=str(REPO), HPCRAG_THREADS="1")
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *command]
    return run_command(argv, env=env, timeout=300).stdout
