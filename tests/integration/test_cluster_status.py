"""`hpcrag cluster status --json` reports what the YAML declares, and live allocations and reasons."""

from __future__ import annotations

import json
import subprocess
import sys

from hpcrag.config import Config
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR
from tests.integration.helpers import eventually, job_state, sbatch_wrap


def status_json(*args: str) -> dict:
    env = {"HPCRAG_CONFIG_DIR": str(CONFIG_DIR), "HPCRAG_PROFILE": "dev", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrag", "cluster", "status", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return {s["site"]: s for s in json.loads(proc.stdout)["sites"]}


def test_status_matches_the_yaml(config: Config, nyc: SlurmTarget, sf: SlurmTarget) -> None:
    report = status_json()
    assert set(report) == {"nyc", "sf"}
    for name, site in report.items():
        declared = config.site(name)
        assert site["reachable"] and site["cluster"] == name
        parts = {p["name"]: p for p in site["partitions"]}
        assert list(parts) == [p.name for p in declared.partitions]
        assert [parts[p.name]["default"] for p in declared.partitions] == [
            p.default for p in declared.partitions
        ]
        assert parts["tier-xl"]["max_time"] == "3-00:00:00"
        assert {t: c["total"] for t, c in site["gpus"].items()} == {"h100": 32, "a100": 16, "l40s": 16}
        assert sorted(n["name"] for n in site["nodes"]) == sorted(declared.node_names)


def test_allocations_and_pending_reasons_appear(sf: SlurmTarget) -> None:
    running = sbatch_wrap(
        sf, "--partition=tier-m", "--gres=gpu:a100:2", "--nodelist=node5", "--wrap=sleep 120"
    )
    held = sbatch_wrap(sf, "--partition=tier-l", "--gres=gpu:h100:1", "--hold", "--wrap=true")
    try:
        eventually(lambda: job_state(sf, running) == "RUNNING", what=f"job {running} running")
        site = status_json("--site", "sf")["sf"]
        assert site["gpus"]["a100"] == {"total": 16, "allocated": 2, "free": 14}
        node5 = next(n for n in site["nodes"] if n["name"] == "node5")
        assert node5["gpus"]["a100"]["allocated"] == 2
        pending = {j["job_id"]: j for j in site["pending_jobs"]}
        assert pending[held]["reason"] == "JobHeldUser"
        assert pending[held]["gres"] == "gres:gpu:h100:1"
    finally:
        sf.scancel(running, held)
