"""Crash safety: a 2-rank `hpcrag index serve` under mpirun takes a stream of updates, and one rank
(the writer, rank 0, or a follower, rank 1) is SIGKILLed mid-stream. Reopened, the index holds every
acknowledged update, at most the one update in flight besides (whole, never torn), checksums hold,
and its answers equal brute force over exactly that state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hpcrag.devcluster.processes import process_table
from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.client import SearchClient
from hpcrag.search.synthetic import clustered
from hpcrag.search.wal import UpdateLog
from tests.integration.helpers import REPO, eventually
from tests.search_helpers import assert_same_neighbours, build_small

BASE, QUERIES = clustered(3000, 20, 16, clusters=10, seed=31)
ACKED_BEFORE_KILL = 25


def _serve(index_dir: Path, endpoint: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_"))}
    env.update(OMPI_MCA_plm="isolated", PYTHONPATH=str(REPO), HPCRAG_THREADS="1")
    argv = [
        "mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2",
        sys.executable, "-m", "hpcrag", "index", "serve", str(index_dir), "--port", "0",
        "--endpoint-file", str(endpoint), "--max-wait-ms", "0",
    ]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def _rank_pid(index_dir: Path, rank: int) -> int | None:
    wanted = f"OMPI_COMM_WORLD_RANK={rank}".encode()
    for pid, cmdline, environ in process_table():
        if str(index_dir).encode() in cmdline.split(b"\0") and wanted in environ.split(b"\0"):
            return pid
    return None


class Writer(threading.Thread):
    """Upserts and deletes as fast as the service answers; remembers what was acknowledged."""

    def __init__(self, client: SearchClient, rng: np.random.Generator) -> None:
        super().__init__(daemon=True)
        self.client, self.rng = client, rng
        self.acked: list[tuple[int, str, np.ndarray, np.ndarray | None]] = []
        self.in_flight: tuple[str, np.ndarray, np.ndarray | None] | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        step = 0
        while True:
            step += 1
            ids = self.rng.choice(4000, size=64, replace=False).astype(np.int64)
            if step % 4 == 0:
                self.in_flight = ("delete", ids, None)
            else:
                vectors = (BASE[ids % len(BASE)] + self.rng.normal(0, 0.2, (64, 16))).astype(np.float32)
                self.in_flight = ("upsert", ids, vectors)
            try:
                kind, ids, vectors = self.in_flight
                result = self.client.delete(ids) if kind == "delete" else self.client.upsert(vectors, ids)
            except HpcragError as exc:
                self.error = exc
                return
            self.acked.append((result.seq, kind, ids, vectors))
            self.in_flight = None


def _state_after(updates: list[tuple[str, np.ndarray, np.ndarray | None]]) -> dict[int, np.ndarray]:
    model = {i: BASE[i] for i in range(len(BASE))}
    for kind, ids, vectors in updates:
        for row, ident in enumerate(ids.tolist()):
            if kind == "delete":
                model.pop(ident, None)
            else:
                model[ident] = vectors[row]
    return model


@pytest.mark.parametrize("victim", [0, 1])
def test_a_rank_killed_mid_stream_loses_no_acknowledged_update(tmp_path: Path, victim: int) -> None:
    index_dir = build_small(tmp_path, BASE, nlist=16, nshards=2, metric="l2")
    endpoint = tmp_path / "endpoint.json"
    process = _serve(index_dir, endpoint)
    try:
        eventually(endpoint.exists, timeout=120, what="service endpoint file")
        client = SearchClient.from_endpoint_file(endpoint, timeout=30)
        eventually(lambda: client.health().get("ranks") == 2, timeout=60, what="service healthy")
        writer = Writer(client, np.random.default_rng(victim))
        writer.start()
        eventually(lambda: len(writer.acked) >= ACKED_BEFORE_KILL, timeout=120, what="acknowledged updates")
        os.kill(eventually(lambda: _rank_pid(index_dir, victim), what=f"rank {victim}"), signal.SIGKILL)
        writer.join(timeout=120)
        assert writer.error is not None, "the service must stop answering once a rank is dead"
        process.wait(timeout=120)
        assert process.returncode != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    acked = writer.acked
    assert [seq for seq, *_ in acked] == list(range(1, len(acked) + 1))
    records = UpdateLog(index_dir, 0).read_new()
    assert len(acked) <= len(records) <= len(acked) + 1, "acknowledged, plus at most the one in flight"
    for (seq, kind, ids, vectors), record in zip(acked, records, strict=False):
        assert record.seq == seq and record.kind == ("put" if kind == "upsert" else "delete")
        if kind == "upsert":
            np.testing.assert_array_equal(record.ids, ids)
            np.testing.assert_array_equal(record.vectors, vectors)
    applied = [(kind, ids, vectors) for _, kind, ids, vectors in acked]
    if len(records) > len(acked):
        kind, ids, vectors = writer.in_flight
        assert records[-1].kind == ("put" if kind == "upsert" else "delete")
        applied.append(writer.in_flight)

    info = subprocess.run(
        [sys.executable, "-m", "hpcrag", "index", "info", str(index_dir)], capture_output=True, text=True
    )
    assert info.returncode == 0 and "files OK (sizes and checksums)" in info.stdout, info.stderr
    reopened = DistributedIndex.open(index_dir)
    assert reopened.seq == len(records)
    model = _state_after(applied)
    assert reopened.ntotal == len(model)
    ids = np.array(sorted(model), dtype=np.int64)
    exact = reference.exact(np.stack([model[i] for i in ids]), Metric.L2, ids)
    distances, expected = reference.search(exact, QUERIES, 10, Metric.L2)
    found = reopened.search(QUERIES, k=10, nprobe=16)
    assert_same_neighbours(found.ids, found.distances, expected, distances)
    reopened.close()
    shutil.rmtree(index_dir)
    print(f"rank {victim} killed after {len(acked)} acknowledged updates; {len(records)} in the log")
    assert json.loads(endpoint.read_text())["url"]
