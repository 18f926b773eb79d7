"""The admin CLI against real clusters: the main job, jobs list/cancel, and failures reported by state."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrag.slurm import batch
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR
from tests.integration.helpers import eventually, job_state, sbatch_wrap

ENV = {"HPCRAG_CONFIG_DIR": str(CONFIG_DIR), "HPCRAG_PROFILE": "dev", "PATH": "/usr/bin:/bin"}


def hpcrag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcrag", *args], capture_output=True, text=True, env={**ENV, **(env or {})},
        timeout=900,
    )  # fmt: skip


def test_demo_runs_mpi_on_both_sites(nyc: SlurmTarget, tmp_path: Path) -> None:
    rag_dir = tmp_path / "collections"  # the demo's RAG collection, kept out of the repository's .run/
    proc = hpcrag("demo", "--workdir", str(tmp_path / "demo logs"), env={"HPCRAG_RAG_DIR": str(rag_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "allreduce" in line]
    assert len(lines) == 2
    for site in ("nyc", "sf"):
        line = next(line for line in lines if line.startswith(f"{site}:"))
        assert f"on cluster {site}, partition tier-s: 4 ranks on node7, node8" in line
        assert "allreduce 10 (expected 10) OK" in line
    assert "nyc: vector search over 2 ranks: recall@10 " in proc.stdout
    # two MPI checks, the index build, the search and the RAG ingest
    assert proc.stdout.count("COMPLETED") == 5
    assert "nyc: vLLM tier s healthy at http://" in proc.stdout and "tokens: " in proc.stdout
    assert "routed 'auto' to tier s (slurm/nyc/" in proc.stdout
    assert "11 Slurm doc pages, collection slurm-docs: generation 1, 11 documents" in proc.stdout
    sources = re.findall(r"^  \[(\d)\] .+ \((\w+\.html)(#[^)]*)?\)$", proc.stdout, re.MULTILINE)
    assert [n for n, _, _ in sources] == ["1", "2", "3"]
    assert {page for _, page, _ in sources} <= {"job_array.html", "scancel.html", "faq.html", "sbatch.html"}
    assert "nyc: RAG answer with 3 numbered sources through the gateway OK" in proc.stdout
    assert (rag_dir / "slurm-docs" / "collection.json").is_file()
    assert "nyc: serve down: job " in proc.stdout


def test_jobs_list_and_cancel(nyc: SlurmTarget) -> None:
    held = sbatch_wrap(nyc, "--partition=tier-m", "--hold", "--job-name=held 'job'", "--wrap=true")
    listed = json.loads(hpcrag("jobs", "list", "--site", "nyc", "--json").stdout)
    mine = next(j for j in listed if j["job_id"] == held)
    assert mine["site"] == "nyc" and mine["state"] == "PENDING" and mine["name"] == "held 'job'"
    proc = hpcrag("jobs", "cancel", held, "--site", "nyc")
    assert proc.returncode == 0 and f"cancelled on nyc: {held}" in proc.stdout
    eventually(lambda: job_state(nyc, held) in ("", "CANCELLED"), what="job gone from the queue")
    proc = hpcrag("jobs", "cancel", "999999", "--site", "nyc")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no such queued or running job on site nyc: 999999")
    assert "Traceback" not in proc.stderr


def test_failed_job_reports_state_and_log(sf: SlurmTarget, tmp_path: Path) -> None:
    script = tmp_path / "fails.sh"
    script.write_text("#!/bin/bash\necho about to fail\nexit 3\n")
    log = tmp_path / "job logs" / "fails.out"
    job_id = batch.submit(sf, script, ["--partition=tier-s"], log)
    with pytest.raises(batch.JobFailedError) as info:
        batch.wait(sf, job_id, log, timeout=120)
    assert info.value.outcome.state == "FAILED"
    assert info.value.outcome.exit_code == "3:0"
    assert str(log) in str(info.value)
    assert log.read_text() == "about to fail\n"


def test_unreachable_site_exits_2_with_a_message(config_copy: Path) -> None:
    profile = config_copy / "profiles" / "dev.yaml"
    profile.write_text(profile.read_text().replace("/var/tmp/hpcrag-dev", "/var/tmp/hpcrag-nowhere"))
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrag", "--config-dir", str(config_copy), "cluster", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "NOT REACHABLE" in proc.stderr and "scripts/dev-cluster up" in proc.stderr
    assert "Traceback" not in proc.stderr
