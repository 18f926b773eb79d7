"""The endpoint registry: rows, states, WAL mode, and many writers at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from hpcrag.errors import HpcragError
from hpcrag.serve.registry import SUBMISSION, Endpoint, Registry


def _endpoint(job_id: str, **changes) -> Endpoint:
    base = dict(
        provider="slurm", site="nyc", job_id=job_id, tier="s", model="m", served_name="m", state="submitted"
    )
    return Endpoint(**{**base, **changes})


def test_rows_round_trip_and_update(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "shared dir" / "serving.sqlite")
    added = registry.add(_endpoint("101", usd_per_hour=0.45, details={"tp": 2}))
    assert added.id is not None and added.details == {"tp": 2} and added.live
    updated = registry.update("slurm", "nyc", "101", state="healthy", url="http://node7:8000", restarts="+1")
    assert (updated.state, updated.url, updated.restarts) == ("healthy", "http://node7:8000", 1)
    assert registry.healthy("s")[0].job_id == "101"
    registry.add(_endpoint("102", site="sf", tier="m"))
    registry.update("slurm", "sf", "102", state="failed", message="vLLM exited with code 1")
    assert [e.job_id for e in registry.find(live_only=True)] == ["101"]
    assert [e.job_id for e in registry.find(site="sf")] == ["102"]
    with sqlite3.connect(registry.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_changes_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    registry.add(_endpoint("1"))
    with pytest.raises(HpcragError, match="unknown endpoint state 'sleepy'"):
        registry.update("slurm", "nyc", "1", state="sleepy")
    with pytest.raises(HpcragError, match="unknown registry columns: colour"):
        registry.update("slurm", "nyc", "1", colour="red")
    with pytest.raises(HpcragError, match="no registered server slurm/nyc/2"):
        registry.update("slurm", "nyc", "2", state="healthy")
    with pytest.raises(HpcragError, match="no endpoint with id 99"):
        registry.get(99)
    with pytest.raises(HpcragError, match="cannot open the endpoint registry"):
        Registry("/proc/nope/serving.sqlite")


def _writer(path: str, worker: int, rounds: int) -> None:
    registry = Registry(path)
    registry.add(_endpoint(f"job-{worker}"))
    for beat in range(rounds):
        registry.update("slurm", "nyc", f"job-{worker}", heartbeat_at=float(beat), restarts="+1")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite")
    Registry(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w, 40)) for w in range(6)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    rows = Registry(path).find()
    assert sorted(e.job_id for e in rows) == [f"job-{w}" for w in range(6)]
    assert all(e.restarts == 40 and e.heartbeat_at == 39.0 for e in rows)


def test_rollback_journal_for_network_file_systems(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite", journal="delete")
    registry.add(_endpoint("7"))
    with sqlite3.connect(registry.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert registry.find()[0].job_id == "7"


def test_status_rows_flag_a_silent_supervisor() -> None:
    from hpcrag.serve.launcher import Row
    from hpcrag.serve.registry import now

    quiet = _endpoint("9", state="healthy", heartbeat_at=now() - 60, log_path="/logs/9.out")
    assert Row(quiet, "RUNNING", stale_after_s=6).problem == (
        "no heartbeat from job 9 on site nyc for 60 s; log: /logs/9.out"
    )
    assert (
        Row(_endpoint("9", state="healthy", heartbeat_at=now()), "RUNNING", stale_after_s=6).problem is None
    )
    dead = _endpoint("9", state="healthy", log_path="/logs/9.out")
    assert Row(dead, "NODE_FAIL").problem == "job 9 on site nyc ended NODE_FAIL; log: /logs/9.out"


def test_a_late_submitter_keeps_what_the_server_reported(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    # The job started and registered itself before sbatch's caller got to write its row.
    registry.add(_endpoint("5", state="starting", url="http://node7:4000", started_at=10.0))
    row = registry.add(_endpoint("5", log_path="/logs/5.out", submitted_at=9.0), update=SUBMISSION)
    assert (row.state, row.url, row.started_at) == ("starting", "http://node7:4000", 10.0)
    assert (row.log_path, row.submitted_at) == ("/logs/5.out", 9.0)
    replaced = registry.add(_endpoint("5"))
    assert (replaced.state, replaced.url, replaced.id) == ("submitted", None, row.id)
