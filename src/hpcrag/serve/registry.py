"""The endpoint registry: one SQLite file on the shared file system, safe under concurrent writers.

WAL mode lets readers proceed while one writer commits; every write is a short `BEGIN IMMEDIATE`
transaction with a generous busy timeout, so supervisors, the CLI and the burst policy can all write
at once. WAL needs every writer on one host (its index is shared memory); across hosts on a network
file system the rollback journal (`journal="delete"`) relies on the file system's POSIX locks.
Each row is one server (a Slurm job or a cloud instance), keyed by (provider, site, job_id). Times are
Unix seconds.

A row holds its server's API key (`secret`), so the file is the one place the gateway learns it: a new
registry is created readable by its owner only (0600, in a 0700 folder when hpcrag makes the folder),
and an existing one that others can read is narrowed to that. An older registry gains the column.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.util import sqlite

STATES = ("submitted", "starting", "healthy", "requeued", "stopping", "stopped", "failed")
LIVE_STATES = ("submitted", "starting", "healthy", "requeued")
INDEX_TIER = "index"  # the tier of search-service replicas (`search.replicas`); the rest are vLLM tiers
SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    site TEXT NOT NULL,
    job_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    served_name TEXT NOT NULL,
    gpu_type TEXT NOT NULL DEFAULT '',
    gpus INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    url TEXT,
    usd_per_hour REAL NOT NULL DEFAULT 0,
    log_path TEXT,
    submitted_at REAL,
    started_at REAL,
    healthy_at REAL,
    heartbeat_at REAL,
    stopped_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}',
    secret TEXT,
    UNIQUE (provider, site, job_id)
);
CREATE INDEX IF NOT EXISTS endpoints_by_tier ON endpoints (tier, state);
"""


@dataclass
class Endpoint:
    provider: str
    site: str
    job_id: str
    tier: str
    model: str
    served_name: str
    state: str
    gpu_type: str = ""
    gpus: int = 0
    url: str | None = None
    usd_per_hour: float = 0.0
    log_path: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    healthy_at: float | None = None
    heartbeat_at: float | None = None
    stopped_at: float | None = None
    restarts: int = 0
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # The server's API key: only the gateway sends it; never shown (see `public`).
    secret: str | None = field(default=None, repr=False)
    id: int | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def public(self) -> dict[str, Any]:
        """Every column but the secret: what may be printed or logged."""
        return {k: v for k, v in vars(self).items() if k != "secret"}


_COLUMNS = [f.name for f in fields(Endpoint) if f.name != "id"]
# What a running server reports about itself; the rest is what its submitter knows.
PROGRESS = (
    "state",
    "url",
    "secret",
    "started_at",
    "healthy_at",
    "heartbeat_at",
    "stopped_at",
    "restarts",
    "message",
)
SUBMISSION = tuple(c for c in _COLUMNS if c not in PROGRESS)


class Registry:
    def __init__(self, path: str | Path, journal: str = "wal") -> None:
        self.path = Path(path)
        self.journal = journal
        fix = "check serving.registry in site-configs/serving.yaml"
        _private(self.path, fix)
        sqlite.initialise(self.path, SCHEMA, "the endpoint registry", fix, journal)
        _migrate(self.path)

    def add(self, endpoint: Endpoint, *, update: Sequence[str] | None = None) -> Endpoint:
        """Insert a server; if its (provider, site, job_id) row exists, set the `update` columns
        (all by default) from `endpoint` and keep the others.

        Submitter and server race: sbatch's caller writes the job's row after sbatch returns, and by
        then the job may have started and registered itself. Each side updates only what it knows
        (`PROGRESS` is what a server reports about itself), so neither erases the other.
        """
        if endpoint.state not in STATES:
            raise HpcragError(f"unknown endpoint state {endpoint.state!r}; states: {', '.join(STATES)}")
        values = [_encode(name, getattr(endpoint, name)) for name in _COLUMNS]
        placeholders = ", ".join("?" for _ in _COLUMNS)
        updated = _COLUMNS if update is None else [c for c in _COLUMNS if c in update]
        updates = ", ".join(f"{name} = excluded.{name}" for name in updated)
        with sqlite.transaction(self.path) as db:
            db.execute(
                f"INSERT INTO endpoints ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
                f"ON CONFLICT (provider, site, job_id) DO UPDATE SET {updates}",
                values,
            )
            row = db.execute(
                "SELECT * FROM endpoints WHERE provider=? AND site=? AND job_id=?",
                (endpoint.provider, endpoint.site, endpoint.job_id),
            ).fetchone()
        return _decode(row)

    def update(self, provider: str, site: str, job_id: str, **changes: Any) -> Endpoint:
        """Change some columns of one server's row; `restarts="+1"` increments."""
        unknown = sorted(set(changes) - set(_COLUMNS))
        if unknown:
            raise HpcragError(f"unknown registry columns: {', '.join(unknown)}")
        if "state" in changes and changes["state"] not in STATES:
            raise HpcragError(f"unknown endpoint state {changes['state']!r}; states: {', '.join(STATES)}")
        assignments = []
        values: list[Any] = []
        for name, value in changes.items():
            if name == "restarts" and value == "+1":
                assignments.append("restarts = restarts + 1")
                continue
            assignments.append(f"{name} = ?")
            values.append(_encode(name, value))
        with sqlite.transaction(self.path) as db:
            cursor = db.execute(
                f"UPDATE endpoints SET {', '.join(assignments)} WHERE provider=? AND site=? AND job_id=?",
                [*values, provider, site, job_id],
            )
            if cursor.rowcount == 0:
                raise HpcragError(f"no registered server {provider}/{site}/{job_id}")
            row = db.execute(
                "SELECT * FROM endpoints WHERE provider=? AND site=? AND job_id=?", (provider, site, job_id)
            ).fetchone()
        return _decode(row)

    def get(self, endpoint_id: int) -> Endpoint:
        with sqlite.connect(self.path) as db:
            row = db.execute("SELECT * FROM endpoints WHERE id=?", (endpoint_id,)).fetchone()
        if row is None:
            raise HpcragError(f"no endpoint with id {endpoint_id}; see `hpcrag serve status --all`")
        return _decode(row)

    def find(
        self,
        *,
        site: str | None = None,
        tier: str | None = None,
        provider: str | None = None,
        live_only: bool = False,
    ) -> list[Endpoint]:
        clauses: list[str] = []
        values: list[Any] = []
        for column, value in (("site", site), ("tier", tier), ("provider", provider)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if live_only:
            clauses.append(f"state IN ({', '.join('?' for _ in LIVE_STATES)})")
            values.extend(LIVE_STATES)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with sqlite.connect(self.path) as db:
            rows = db.execute(f"SELECT * FROM endpoints {where} ORDER BY id", values).fetchall()
        return [_decode(row) for row in rows]

    def healthy(self, tier: str | None = None) -> list[Endpoint]:
        return [e for e in self.find(tier=tier, live_only=True) if e.state == "healthy"]


def _private(path: Path, fix: str) -> None:
    """Create the registry file (and a missing folder) for its owner only; narrow one others can read."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # SQLite gives its -wal and -shm files the database's mode; older ones keep theirs.
        for item in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if item.exists() and item.stat().st_uid == os.geteuid() and item.stat().st_mode & 0o077:
                item.chmod(0o600)
    except OSError as exc:
        raise HpcragError(f"cannot open the endpoint registry {path}: {exc}; {fix}") from None


def _migrate(path: Path) -> None:
    """Add the column a registry made by an older hpcrag lacks (checked again under the write lock:
    two processes may open an old registry at once)."""
    with sqlite.connect(path) as db:
        if "secret" in _columns(db):
            return
    with sqlite.transaction(path) as db:
        if "secret" not in _columns(db):
            db.execute("ALTER TABLE endpoints ADD COLUMN secret TEXT")


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row["name"] for row in db.execute("PRAGMA table_info(endpoints)")}


def _encode(name: str, value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if name == "details" else value


def _decode(row: sqlite3.Row) -> Endpoint:
    data = dict(row)
    data["details"] = json.loads(data["details"] or "{}")
    return Endpoint(**data)


def now() -> float:
    return time.time()
