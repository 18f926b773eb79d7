"""Submit a batch script to a site and wait for its end, reporting a failed job by state and log.

A job that dies is a `JobFailedError` carrying the Slurm state, exit code and log path: what an
admin needs to look into it, never a Python traceback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcrag.errors import HpcragError
from hpcrag.slurm.target import SlurmTarget

TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    state: str
    exit_code: str
    elapsed: str
    log: Path


class JobFailedError(HpcragError):
    def __init__(self, site: str, outcome: JobOutcome) -> None:
        self.outcome = outcome
        super().__init__(
            f"job {outcome.job_id} on site {site} ended {outcome.state} (exit code {outcome.exit_code}); "
            f"log: {outcome.log}"
        )


def submit(
    target: SlurmTarget,
    script: Path,
    sbatch_args: Sequence[str],
    log: Path,
    script_args: Sequence[str] = (),
) -> str:
    """sbatch `script` (with `script_args`) on the target with `--output=log`; returns the job id."""
    if not script.is_file():
        raise HpcragError(f"batch script not found: {script}")
    log.parent.mkdir(parents=True, exist_ok=True)
    out = target.sbatch(f"--output={log}", *sbatch_args, str(script), *script_args)
    match = _SUBMITTED.search(out)
    if not match:
        raise HpcragError(f"could not read a job id from sbatch's answer: {out.strip()!r}")
    return match.group(1)


def wait(target: SlurmTarget, job_id: str, log: Path, timeout: float = 300.0) -> JobOutcome:
    """Poll sacct until the job ends; raise JobFailedError unless it COMPLETED."""
    deadline = time.monotonic() + timeout
    while True:
        row = _sacct_row(target, job_id)
        state = row.get("State", "PENDING").split()[0] if row else "PENDING"
        if state in TERMINAL_STATES:
            outcome = JobOutcome(job_id, state, row.get("ExitCode", "?"), row.get("Elapsed", "?"), log)
            if state != "COMPLETED":
                raise JobFailedError(target.site, outcome)
            return outcome
        if time.monotonic() > deadline:
            raise HpcragError(
                f"job {job_id} on site {target.site} still {state} after {timeout:.0f}s; log: {log}"
            )
        time.sleep(0.5)


def _sacct_row(target: SlurmTarget, job_id: str) -> dict[str, str]:
    out = target.sacct("-X", "-n", "-P", "-o", "JobID,State,ExitCode,Elapsed", f"--jobs={job_id}")
    for line in out.splitlines():
        fields = line.split("|")
        if fields[0] == job_id:
            return dict(zip(("JobID", "State", "ExitCode", "Elapsed"), fields, strict=False))
    return {}
