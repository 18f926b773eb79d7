"""Index replicas under the real local Slurm: two replica jobs of one index, one at each site, submitted
by `hpcrag index serve-group`; a ReplicaSet keeps answering every search while one replica's rank is
killed, takes updates on the survivor, and the requeued replica rejoins caught up on the update log."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import BuildOptions, DistributedIndex, build_index
from hpcrag.search.client import SearchClient
from hpcrag.search.metric import Metric
from hpcrag.search.replicas import ReplicaSet
from hpcrag.search.synthetic import clustered
from hpcrag.serve.registry import INDEX_TIER, Endpoint, Registry
from hpcrag.slurm.command import run_command
from hpcrag.slurm.target import SlurmTarget
from tests.integration.helpers import eventually, job_state
from tests.integration.test_search_slurm import _rank_pid

pytestmark = pytest.mark.integration

GROUP = "failover"
K, NPROBE = 5, 4
SUBMITTED = re.compile(r"replica \d+ of '[^']+': job (\d+) at site (\w+), log (\S+)")


@dataclass
class Traffic:
    """What the client thread saw: every search it sent either answered or failed."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    last_error: str = ""


def _search_steadily(front: ReplicaSet, queries: np.ndarray, stop: threading.Event, seen: Traffic) -> None:
    """One query every 50 ms through the front until `stop`."""
    while not stop.wait(0.05):
        seen.sent += 1
        try:
            front.search(queries[seen.sent % len(queries)][None], k=K, nprobe=NPROBE)
            seen.answered += 1
        except HpcragError as exc:
            seen.failed += 1
            seen.last_error = str(exc)


def _hpcrag(args: list[str], env: dict[str, str], cwd: Path) -> str:
    return run_command([sys.executable, "-m", "hpcrag", *args], env=env, timeout=120, cwd=cwd).stdout


def _rows(registry_path: Path) -> dict[str, Endpoint]:
    """The group's healthy registry rows by site."""
    rows = Registry(registry_path).healthy(INDEX_TIER)
    return {row.site: row for row in rows if row.served_name == GROUP and row.url}


def _health(row: Endpoint) -> dict:
    with SearchClient(row.url, timeout=5, token=row.secret or "") as client:
        return client.health()


def _answering(front: ReplicaSet, count: int) -> bool:
    """Whether `count` replicas are registered and each answers /health with its index state."""
    replicas = front.replicas()
    try:
        return len(replicas) == count and all("seq" in r.client.health() for r in replicas)
    except HpcragError:
        return False


def _rejoined(registry_path: Path, old: Endpoint) -> Endpoint | None:
    """NYC's row once the requeued job has registered again (a new token) and answers."""
    row = _rows(registry_path).get("nyc")
    if row is None or row.secret == old.secret:
        return None
    try:
        return row if "seq" in _health(row) else None
    except HpcragError:
        return None


def test_a_killed_replica_loses_no_search_and_rejoins_caught_up(
    nyc: SlurmTarget, sf: SlurmTarget, tmp_path: Path
) -> None:
    base, queries = clustered(3000, 40, 32, clusters=12, seed=21)
    np.save(tmp_path / "base.npy", base)
    index_dir = tmp_path / "index"
    build_index(tmp_path / "base.npy", index_dir, BuildOptions(nlist=16, nshards=2, metric=Metric.L2))
    registry_path = tmp_path / "registry.sqlite"
    env = {"HPCRAG_REGISTRY": str(registry_path), "MAX_RESTARTS": "1"}  # the jobs inherit both
    targets, jobs = {"nyc": nyc, "sf": sf}, {}
    stop, seen = threading.Event(), Traffic()
    front = ReplicaSet.from_registry(
        registry_path, GROUP, refresh_s=0.5, failures_to_open=2, open_s=2.0, timeout=10.0
    )
    client = threading.Thread(target=_search_steadily, args=(front, queries, stop, seen), daemon=True)
    try:
        out = _hpcrag(
            [
                "index", "serve-group", str(index_dir), "--group", GROUP, "--replicas", "2",
                "--sites", "nyc,sf", "--ntasks", "2", "--partition", "tier-s", "--log-dir", str(tmp_path),
            ],
            env, tmp_path,
        )  # fmt: skip
        jobs = {site: (job, Path(log.replace("%j", job))) for job, site, log in SUBMITTED.findall(out)}
        assert sorted(jobs) == ["nyc", "sf"], out
        eventually(lambda: _answering(front, 2), timeout=120, what="both replicas answering")
        nyc_job, nyc_log = jobs["nyc"]
        old_nyc = _rows(registry_path)["nyc"]
        dead = {r.name: r for r in front.replicas()}[f"nyc/{nyc_job}"]
        client.start()

        rng = np.random.default_rng(5)
        before = front.upsert(rng.standard_normal((10, 32)).astype(np.float32), np.arange(5000, 5010))
        assert before.added == 10 and front.written_seq == before.seq

        killed_at = time.monotonic()
        os.kill(eventually(lambda: _rank_pid(nyc_job, 1), what="rank 1's process"), signal.SIGKILL)
        eventually(lambda: "requeueing job" in nyc_log.read_text(), timeout=60, what="requeue message")
        assert "a rank failed or was killed" in nyc_log.read_text()
        eventually(lambda: dead.circuit.times_opened, timeout=30, what="the dead replica's circuit opened")
        assert front.stats.circuits_opened >= 1 and dead.failed >= 2
        eventually(lambda: job_state(nyc, nyc_job) == "PENDING", what="requeued job pending")

        # While NYC is down: new ids, replaced ids and deletes, all acknowledged by SF.
        fresh = rng.standard_normal((10, 32)).astype(np.float32)
        added = front.upsert(fresh, np.arange(6000, 6010))
        replaced = front.upsert(rng.standard_normal((5, 32)).astype(np.float32), np.arange(5))
        deleted = front.delete(np.concatenate([np.arange(100, 110), np.arange(5000, 5003)]))
        assert (added.added, replaced.replaced, deleted.deleted) == (10, 5, 13)
        assert before.seq < added.seq < replaced.seq < deleted.seq == front.written_seq
        assert job_state(nyc, nyc_job) == "PENDING"

        back = eventually(
            lambda: _rejoined(registry_path, old_nyc), timeout=90 + 180, what="NYC replica rejoined"
        )
        rejoin_s = time.monotonic() - killed_at
        # It registered only after replaying the log: at once it is where SF is, at the last write.
        assert _health(back)["seq"] == _health(_rows(registry_path)["sf"])["seq"] == deleted.seq
        assert back.restarts == 1 and "(restart 1)" in nyc_log.read_text()
        eventually(
            lambda: any(r.url == back.url and r.answered for r in front.replicas()),
            timeout=30,
            what="the front sends the rejoined replica traffic",
        )
        stop.set()
        client.join(timeout=30)

        probe = np.concatenate([queries, fresh])
        answers = {}
        for site, row in _rows(registry_path).items():
            with SearchClient(row.url, token=row.secret or "") as direct:
                answers[site] = direct.search(probe, k=K, nprobe=NPROBE).ids
        local = DistributedIndex.open(index_dir)
        try:
            expected = local.search(probe, k=K, nprobe=NPROBE)
        finally:
            local.close()
        np.testing.assert_array_equal(answers["nyc"], answers["sf"])
        np.testing.assert_array_equal(answers["nyc"], expected.ids)
        np.testing.assert_array_equal(expected.ids[len(queries) :, 0], np.arange(6000, 6010))
        assert not np.isin(expected.ids, [*range(100, 110), 5000, 5001, 5002]).any()

        report = json.loads(_hpcrag(["index", "replicas", GROUP, "--json"], env, tmp_path))
        assert sorted((r["site"], r["slurm"], r["state"], r["restarts"]) for r in report) == [
            ("nyc", "RUNNING", "healthy", 1),
            ("sf", "RUNNING", "healthy", 0),
        ]
        assert {r["seq"] for r in report} == {deleted.seq}
        assert len({r["vectors"] for r in report}) == 1

        assert seen.failed == 0 and front.stats.failed == 0, seen.last_error
        assert seen.answered == seen.sent > 0
        print(
            f"\nfailover: {seen.sent} searches sent, {seen.failed} failed, {front.stats.retries} retries, "
            f"{front.stats.circuits_opened} circuit(s) opened, NYC rejoined {rejoin_s:.0f} s after the "
            f"kill at update #{deleted.seq}\n  " + "\n  ".join(front.stats.events)
        )
    finally:
        stop.set()
        front.close()
        for site, (job, _) in jobs.items():
            targets[site].scancel(job)
