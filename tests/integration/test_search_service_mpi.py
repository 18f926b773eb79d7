"""`mpirun -n 2 hpcrag index serve`: a follower rank idles without burning a core (it spun at 99%
before), and the service answers correctly, with its token, right after the idle spell."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hpcrag.devcluster.processes import process_table
from hpcrag.search import DistributedIndex
from hpcrag.search.client import SearchClient
from hpcrag.search.synthetic import clustered
from tests.integration.helpers import REPO, eventually, mpirun
from tests.search_helpers import build_small

IDLE_SECONDS = 5.0
MAX_IDLE_CPU = 0.05  # of one core


def _rank_pid(marker: str, rank: int) -> int | None:
    wanted = {f"HPCRAG_TEST_MARKER={marker}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid, _, environ in process_table():
        if wanted <= set(environ.split(b"\0")):
            return pid
    return None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    root = tmp_path_factory.mktemp("idle service")
    base, _ = clustered(3000, 10, 16, clusters=8, seed=5)
    index_dir = build_small(root, base, nlist=16, nshards=2)
    endpoint, marker = root / "endpoint.json", uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_"))}
    env.update(OMPI_MCA_plm="isolated", PYTHONPATH=str(REPO), HPCRAG_THREADS="1", HPCRAG_TEST_MARKER=marker)
    env.pop("HPCRAG_SEARCH_TOKEN", None)
    command = [
        "mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2",
        sys.executable, "-m", "hpcrag", "index", "serve", str(index_dir), "--port", "0",
        "--endpoint-file", str(endpoint),
    ]  # fmt: skip
    log = root / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: endpoint.exists() or process.poll() is not None, timeout=120, what="endpoint file")
        assert process.poll() is None, log.read_text()
        yield index_dir, endpoint, marker
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_an_idle_follower_uses_under_5_percent_of_a_core(served: tuple[Path, Path, str]) -> None:
    index_dir, endpoint, marker = served
    follower = eventually(lambda: _rank_pid(marker, 1), what="rank 1's process")
    with SearchClient.from_endpoint_file(endpoint) as client:
        client.search(np.ones((1, 16), dtype=np.float32), k=5, nprobe=4)  # warm: the follower has worked
    before, started = _cpu_seconds(follower), time.monotonic()
    time.sleep(IDLE_SECONDS)
    share = (_cpu_seconds(follower) - before) / (time.monotonic() - started)
    assert share < MAX_IDLE_CPU, f"rank 1 used {share:.1%} of a core while idle"

    _, queries = clustered(3000, 10, 16, clusters=8, seed=5)
    expected = DistributedIndex.open(index_dir).search(queries, k=5, nprobe=8)
    with SearchClient.from_endpoint_file(endpoint) as client:
        assert client.health()["ranks"] == 2
        np.testing.assert_array_equal(client.search(queries, k=5, nprobe=8).ids, expected.ids)
    assert json.loads(endpoint.read_text())["url"].startswith("http://127.0.0.1:")
    assert endpoint.stat().st_mode & 0o777 == 0o600


ANNOUNCE_DRIVER = """
import sys
from hpcrag.search.comm import MpiComm
comm = MpiComm()
for size in (0, 1, 400, 503, 504, 505, 5000):
    sent = {"op": "error", "message": "x" * size} if comm.rank == 0 else None
    got = comm.announce(sent)
    assert got == {"op": "error", "message": "x" * size}, (comm.rank, size)
print(f"announced {comm.rank};", flush=True)
"""


def test_announce_carries_objects_larger_than_its_buffer() -> None:
    out = mpirun(3, sys.executable, "-c", ANNOUNCE_DRIVER)
    assert sorted(re.findall(r"announced (\d);", out)) == ["0", "1", "2"], out
