"""The endpoint registry: rows, states, WAL mode, and many writers at once."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from hpcrag.errors import HpcragError
from hpcrag.serve.registry import SCHEMA, SUBMISSION, Endpoint, Registry


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


def test_the_secret_is_the_servers_to_report_and_never_shown(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    registry.add(_endpoint("7", state="starting", url="http://n:1", secret="s3cret"), update=None)
    # The submitter writes its row after the job registered itself: the key survives it.
    row = registry.add(_endpoint("7", log_path="/logs/7.out"), update=SUBMISSION)
    assert (row.secret, row.state, row.log_path) == ("s3cret", "starting", "/logs/7.out")
    assert "s3cret" not in repr(row) and "secret" not in row.public() and row.public()["job_id"] == "7"
    assert registry.update("slurm", "nyc", "7", secret="new").secret == "new"  # a restart's new key


def test_the_registry_is_private_to_its_owner(tmp_path: Path) -> None:
    fresh = Registry(tmp_path / "new dir" / "serving.sqlite")
    with sqlite3.connect(fresh.path) as held:  # keeps -wal and -shm in place while it is open
        held.execute("SELECT 1 FROM endpoints").fetchall()
        fresh.add(_endpoint("1"))
        files = [fresh.path, Path(f"{fresh.path}-wal"), Path(f"{fresh.path}-shm")]
        assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
        assert fresh.path.parent.stat().st_mode & 0o777 == 0o700
        # One an older hpcrag made readable by everyone is narrowed, -wal and -shm included.
        for item in files:
            item.chmod(0o644)
        Registry(fresh.path)
        assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
    os.chmod(tmp_path, 0o755)
    Registry(tmp_path / "other.sqlite")
    assert tmp_path.stat().st_mode & 0o777 == 0o755  # a folder it did not make is not its to change


def test_an_older_registry_gains_the_secret_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace("    secret TEXT,\n", ""))
        db.execute(
            "INSERT INTO endpoints (provider, site, job_id, tier, model, served_name, state, url) "
            "VALUES ('slurm', 'nyc', '9', 's', 'm', 'm', 'healthy', 'http://n:2')"
        )
    assert "secret" not in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(endpoints)")}
    registry = Registry(path)
    (row,) = registry.find()
    assert (row.job_id, row.url, row.secret) == ("9", "http://n:2", None)
    assert registry.update("slurm", "nyc", "9", secret="k").secret == "k"
    Registry(path)  # a second open finds the column and leaves it
    assert registry.get(row.id).secret == "k"
