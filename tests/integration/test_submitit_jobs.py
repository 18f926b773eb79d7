"""submitit jobs land on the site, partition and GPUs asked for, and their states come from sacct."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hpcrag.config import Config
from hpcrag.slurm.executor import site_executor
from hpcrag.slurm.target import SlurmTarget
from tests.integration.helpers import eventually


def where_am_i() -> dict[str, str]:
    keys = ("SLURM_CLUSTER_NAME", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")
    return {k: os.environ.get(k, "") for k in keys}


def test_jobs_on_two_sites(
    config: Config, nyc: SlurmTarget, sf: SlurmTarget, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "submitit logs"
    caplog.set_level(logging.WARNING)
    on_nyc = site_executor("nyc", "tier-s", "l40s", 1, folder=folder, config=config, time=5)
    on_sf = site_executor("sf", "tier-m", "a100", 2, folder=folder, config=config, time=5)
    job_nyc, job_sf = on_nyc.submit(where_am_i), on_sf.submit(where_am_i)

    assert job_nyc.result() == {
        "SLURM_CLUSTER_NAME": "nyc",
        "SLURM_JOB_PARTITION": "tier-s",
        "CUDA_VISIBLE_DEVICES": "0",
        "SLURM_JOB_ID": job_nyc.job_id,
    }
    assert job_sf.result() == {
        "SLURM_CLUSTER_NAME": "sf",
        "SLURM_JOB_PARTITION": "tier-m",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_JOB_ID": job_sf.job_id,
    }
    assert int(job_nyc.job_id) >= config.dev_settings("nyc").first_job_id
    assert int(job_sf.job_id) >= config.dev_settings("sf").first_job_id

    eventually(
        lambda: job_nyc.watcher.get_state(job_nyc.job_id, mode="force") == "COMPLETED",
        what="nyc job COMPLETED in sacct",
    )
    eventually(
        lambda: job_sf.watcher.get_state(job_sf.job_id, mode="force") == "COMPLETED",
        what="sf job COMPLETED in sacct",
    )
    assert job_nyc.state == "COMPLETED" and job_sf.state == "COMPLETED"
    noisy = [
        r.getMessage() for r in caplog.records if "inaccurate" in r.getMessage() or "stale" in r.getMessage()
    ]
    assert noisy == []

    expected = {("nyc", job_nyc.job_id, "tier-s", "COMPLETED"), ("sf", job_sf.job_id, "tier-m", "COMPLETED")}

    def accounted() -> set[tuple[str, ...]]:
        # slurmdbd may first store a job without its partition; the full record follows shortly.
        listed = nyc.sacct(
            "--clusters=nyc,sf",
            "-X",
            "-n",
            "-P",
            "-o",
            "Cluster,JobID,Partition,State",
            f"--jobs={job_nyc.job_id},{job_sf.job_id}",
        )
        rows = {tuple(line.split("|")) for line in listed.splitlines()}
        return rows if expected <= rows else set()

    eventually(accounted, timeout=30, what="both jobs in accounting with their partitions")


def test_cancel_goes_to_the_jobs_own_cluster(config: Config, sf: SlurmTarget, tmp_path: Path) -> None:
    executor = site_executor("sf", "tier-l", "h100", 1, folder=tmp_path, config=config, time=5)
    job = executor.submit(sleep_long)
    eventually(
        lambda: job.watcher.get_state(job.job_id, mode="force") in ("PENDING", "RUNNING"),
        what="job known to sacct",
    )
    job.cancel()
    eventually(
        lambda: job.watcher.get_state(job.job_id, mode="force").startswith("CANCELLED"), what="job cancelled"
    )


def sleep_long() -> None:
    import time

    time.sleep(300)
