"""GPU-hours and dollars of the serving fleet in a time window.

Slurm jobs: every run of every registered job (`sacct -D` lists the runs a requeue makes), its
allocated GPUs from AllocTRES and its elapsed time, clipped to the window, times the site's price per
GPU-hour (`gpu_price_usd_per_hour` in the site's file). Cloud servers: their registry start and stop
times times the provider's price for the replica.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime

from hpcrag.config import Config
from hpcrag.errors import HpcragError
from hpcrag.serve.registry import Endpoint
from hpcrag.serve.supervisor import PROVIDER as ON_PREM
from hpcrag.slurm.target import SlurmTarget

_GPUS = re.compile(r"(?:^|,)gres/gpu=(\d+)")


@dataclass(frozen=True)
class JobUsage:
    provider: str
    site: str
    tier: str
    job_id: str
    gpu_type: str
    gpus: int
    start: float
    end: float
    gpu_hours: float
    usd: float
    source: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SacctRun:
    job_id: str
    start: float
    end: float | None
    gpus: int


def parse_sacct_runs(text: str) -> list[SacctRun]:
    """Lines of `sacct -X -D -n -P -o JobIDRaw,Start,End,AllocTRES`; runs that never started are skipped."""
    runs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, start, end, tres = parts[:4]
        started = _timestamp(start)
        if started is None:
            continue
        match = _GPUS.search(tres)
        runs.append(SacctRun(job_id, started, _timestamp(end), int(match.group(1)) if match else 0))
    return runs


def _timestamp(text: str) -> float | None:
    if text in ("", "Unknown", "None"):
        return None
    return datetime.fromisoformat(text).timestamp()


def _clip(start: float, end: float, since: float, until: float) -> float:
    return max(0.0, min(end, until) - max(start, since))


def fleet_usage(
    config: Config, rows: list[Endpoint], since: float, until: float | None = None
) -> tuple[list[JobUsage], list[str]]:
    """Usage of every server in `rows` within [since, until], and a notice per site sacct could not read."""
    until = time.time() if until is None else until
    notices: list[str] = []
    usage: list[JobUsage] = []
    slurm_rows: dict[str, dict[str, Endpoint]] = defaultdict(dict)
    for row in rows:
        if row.provider == ON_PREM:
            slurm_rows[row.site][row.job_id] = row
        else:
            usage.extend(_cloud_usage(row, since, until))
    for site, by_job in slurm_rows.items():
        target = SlurmTarget.for_site(config.site(site))
        try:
            text = target.sacct(
                "-X", "-D", "-n", "-P", "-o", "JobIDRaw,Start,End,AllocTRES", f"--jobs={','.join(by_job)}"
            )
        except HpcragError as exc:
            notices.append(f"site {site}: no GPU-hours, sacct failed: {str(exc).splitlines()[0]}")
            continue
        price = config.site(site).gpu_price_usd_per_hour
        for run in parse_sacct_runs(text):
            row = by_job.get(run.job_id)
            if row is None:
                continue
            hours = _clip(run.start, run.end if run.end is not None else until, since, until) / 3600.0
            gpu_hours = hours * run.gpus
            usage.append(
                JobUsage(
                    row.provider,
                    site,
                    row.tier,
                    row.job_id,
                    row.gpu_type,
                    run.gpus,
                    run.start,
                    run.end if run.end is not None else until,
                    gpu_hours,
                    gpu_hours * price.get(row.gpu_type, 0.0),
                    "sacct",
                )
            )
    return usage, notices


def _cloud_usage(row: Endpoint, since: float, until: float) -> list[JobUsage]:
    start = row.started_at or row.submitted_at
    if start is None:
        return []
    end = row.stopped_at if row.stopped_at is not None else until
    hours = _clip(start, end, since, until) / 3600.0
    if hours <= 0:
        return []
    return [
        JobUsage(
            row.provider,
            row.site,
            row.tier,
            row.job_id,
            row.gpu_type,
            row.gpus,
            start,
            end,
            hours * row.gpus,
            hours * row.usd_per_hour,
            "registry",
        )
    ]
