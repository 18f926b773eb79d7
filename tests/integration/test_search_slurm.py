"""The search under the real local Slurm: build and search through the sbatch templates and
`srun --mpi=pmix`, the HTTP service, and what happens when one of its ranks is killed."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrag.devcluster.processes import process_table
from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex
from hpcrag.search.client import SearchClient
from hpcrag.search.synthetic import clustered
from hpcrag.slurm.batch import JobFailedError, submit, wait
from hpcrag.slurm.command import run_command
from hpcrag.slurm.target import SlurmTarget
from tests.integration.helpers import eventually, job_state

REPO = Path(__file__).resolve().parents[2]
EXPORT = f"--export=ALL,HPCRAG_PYTHON={sys.executable}"


@pytest.fixture(scope="module")
def built(nyc: SlurmTarget, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index built by `sbatch slurm/index-build.sbatch` with two ranks."""
    root = tmp_path_factory.mktemp("slurm search")
    base, queries = clustered(4000, 30, 32, clusters=10, seed=8)
    np.save(root / "base.npy", base)
    np.save(root / "queries.npy", queries)
    args = [str(root / "base.npy"), "--out", str(root / "index"), "--nlist", "32", "--shards", "2"]
    log = root / "build.log"
    job = submit(nyc, REPO / "slurm/index-build.sbatch", ["--partition=tier-s", "--ntasks=2", EXPORT], log)
    with pytest.raises(JobFailedError, match=r"ended FAILED .*log: "):
        wait(nyc, job, log, timeout=120)  # no arguments and no VECTORS: the template says what to set
    assert "set VECTORS, INDEX and NLIST with --export" in log.read_text()
    job = submit(
        nyc, REPO / "slurm/index-build.sbatch", ["--partition=tier-s", "--ntasks=2", EXPORT], log, args
    )
    wait(nyc, job, log, timeout=180)
    assert "2 shards" in log.read_text() and "on 2 rank(s)" in log.read_text()
    return root


def test_srun_search_equals_the_api(nyc: SlurmTarget, built: Path) -> None:
    result_path = built / "result.npz"
    out = run_command(
        [
            "srun", "--partition=tier-s", "--mpi=pmix", "--ntasks=2", "--gpus-per-task=1",
            sys.executable, "-m", "hpcrag", "index", "search", str(built / "index"),
            "--queries", str(built / "queries.npy"), "--k", "5", "--nprobe", "4", "--out", str(result_path),
        ],
        env=nyc.env,
        timeout=120,
    ).stdout  # fmt: skip
    assert "30 queries, k=5, nprobe=4" in out and "on 2 rank(s)" in out
    expected = DistributedIndex.open(built / "index").search(np.load(built / "queries.npy"), k=5, nprobe=4)
    np.testing.assert_array_equal(np.load(result_path)["ids"], expected.ids)
    manifest = json.loads((built / "index" / "manifest.json").read_text())
    assert manifest["build"]["ranks"] == 2


def _rank_pid(job_id: str, rank: int) -> int | None:
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode()}
    for pid, cmdline, environ in process_table():
        words = cmdline.split(b"\0")
        if b"serve" in words and b"hpcrag" in words and wanted <= set(environ.split(b"\0")):
            return pid
    return None


def _serving(endpoint: Path, restart: int, log: Path) -> str | None:
    if not endpoint.exists() or f"(restart {restart})" not in log.read_text():
        return None
    url = json.loads(endpoint.read_text())["url"]
    try:
        with SearchClient.from_endpoint_file(endpoint, timeout=2) as client:
            return url if client.health().get("ranks") else None  # the shape shows only with the token
    except HpcragError:
        return None


def test_service_answers_then_a_killed_rank_requeues_and_finally_fails(nyc: SlurmTarget, built: Path) -> None:
    log, endpoint = built / "serve.log", built / "endpoint.json"
    env = f"{EXPORT},INDEX={built / 'index'},PORT=0,ENDPOINT_FILE={endpoint},MAX_RESTARTS=1"
    job = submit(nyc, REPO / "slurm/index-serve.sbatch", ["--partition=tier-s", "--ntasks=2", env], log)
    try:
        url = eventually(lambda: _serving(endpoint, 0, log), timeout=90, what="service healthy")
        queries = np.load(built / "queries.npy")
        expected = DistributedIndex.open(built / "index").search(queries, k=5, nprobe=8)
        with SearchClient.from_endpoint_file(endpoint) as client:
            assert client.url == url and client.health()["ranks"] == 2
            np.testing.assert_array_equal(client.search(queries, k=5, nprobe=8).ids, expected.ids)

        os.kill(eventually(lambda: _rank_pid(job, 1), what="rank 1's process"), signal.SIGKILL)
        eventually(lambda: "requeueing job" in log.read_text(), timeout=60, what="requeue message")
        text = log.read_text()
        assert "task 1: Killed" in text and "a rank failed or was killed" in text
        assert eventually(lambda: job_state(nyc, job) == "PENDING", what="requeued job pending")
        # Slurm holds a requeued job back for the credential lifetime (120 s): forcing StartTime=now
        # raced it, and the node refused the job ("Job credential revoked"). So the test waits.
        eventually(lambda: _serving(endpoint, 1, log), timeout=90 + 180, what="service back after requeue")
        with SearchClient.from_endpoint_file(endpoint) as client:
            np.testing.assert_array_equal(client.search(queries, k=5, nprobe=8).ids, expected.ids)

        os.kill(eventually(lambda: _rank_pid(job, 1), what="rank 1's process"), signal.SIGKILL)
        with pytest.raises(JobFailedError, match=rf"job {job} on site nyc ended FAILED .*log: {log}"):
            wait(nyc, job, log, timeout=90)
        assert "giving up after 1 restart(s)" in log.read_text()
    finally:
        nyc.scancel(job)
