"""The usage ledger: one row per request the gateway answered or refused, in the gateway's database.

A row carries who asked (key, user tier), where it went (tier, site, provider, endpoint, job), what it
used (tokens from vLLM's `usage`), what it cost (tokens times the endpoint's dollars per token at that
moment, kept in the row so that reports add up exactly) and why it went there (the routing decision).
The gateway hands rows to a `LedgerWriter`, which inserts them in batches from its own thread so that
no request waits on the disk.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.util import sqlite

log = logging.getLogger(__name__)
DATABASE_FIX = "check 'database' in site-configs/gateway.yaml (or HPCRAG_GATEWAY_DB)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    key TEXT NOT NULL DEFAULT '',
    user_tier TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    tier TEXT NOT NULL DEFAULT '',
    site TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    job_id TEXT NOT NULL DEFAULT '',
    endpoint TEXT NOT NULL DEFAULT '',
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    usd_per_token REAL NOT NULL DEFAULT 0,
    usd REAL NOT NULL DEFAULT 0,
    ttft_s REAL,
    latency_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    decision TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (started_at);
CREATE INDEX IF NOT EXISTS requests_by_key ON requests (key, started_at);
"""


@dataclass
class RequestRecord:
    request_id: str
    started_at: float
    route: str
    status: int
    outcome: str
    key: str = ""
    user_tier: str = ""
    model: str = ""
    tier: str = ""
    site: str = ""
    provider: str = ""
    job_id: str = ""
    endpoint: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd_per_token: float = 0.0
    usd: float = 0.0
    ttft_s: float | None = None
    latency_s: float | None = None
    attempts: int = 0
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_COLUMNS = [f.name for f in fields(RequestRecord)]


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        sqlite.initialise(self.path, SCHEMA, "the gateway database", DATABASE_FIX)

    def insert(self, records: list[RequestRecord]) -> None:
        rows = [
            [json.dumps(v, sort_keys=True) if k == "decision" else v for k, v in asdict(r).items()]
            for r in records
        ]
        with sqlite.transaction(self.path) as db:
            db.executemany(
                f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                rows,
            )

    def since(self, started_after: float, until: float | None = None) -> list[RequestRecord]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE started_at >= ?"
        values: list[float] = [started_after]
        if until is not None:
            query += " AND started_at < ?"
            values.append(until)
        with sqlite.connect(self.path) as db:
            rows = db.execute(query + " ORDER BY id", values).fetchall()
        return [_decode(row) for row in rows]

    def last(self, count: int) -> list[RequestRecord]:
        with sqlite.connect(self.path) as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests ORDER BY id DESC LIMIT ?", (count,)
            ).fetchall()
        return [_decode(row) for row in reversed(rows)]

    def spend_by_key(self, started_after: float) -> dict[str, float]:
        with sqlite.connect(self.path) as db:
            rows = db.execute(
                "SELECT key, SUM(usd) FROM requests WHERE started_at >= ? GROUP BY key", (started_after,)
            ).fetchall()
        return {key: total or 0.0 for key, total in rows}


def _decode(row: sqlite3.Row) -> RequestRecord:
    data = dict(row)
    data["decision"] = json.loads(data["decision"] or "{}")
    return RequestRecord(**data)


class LedgerWriter:
    """Inserts recorded rows in batches from a daemon thread; `flush()` waits until all are written."""

    def __init__(self, ledger: Ledger, batch: int = 4096, linger_s: float = 0.25) -> None:
        self.ledger = ledger
        self.batch = batch
        self.linger_s = linger_s
        self._queue: queue.Queue[RequestRecord | threading.Event] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def record(self, record: RequestRecord) -> None:
        self._queue.put(record)

    def flush(self, timeout: float = 30.0) -> None:
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise HpcragError(f"the usage ledger {self.ledger.path} did not take its rows in {timeout:.0f} s")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if not isinstance(item, threading.Event):
                # Let rows gather: one wake-up per request would take the GIL from the event loop
                # hundreds of times a second, which shows in the gateway's tail latency.
                time.sleep(self.linger_s)
            pending: list[RequestRecord] = []
            markers: list[threading.Event] = []
            while True:
                if isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    pending.append(item)
                if len(pending) >= self.batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            while pending:
                try:
                    self.ledger.insert(pending)
                    break
                except sqlite3.Error as exc:  # a full or locked disk: keep the rows and try again
                    log.error("usage ledger %s: %s; retrying in 1 s", self.ledger.path, exc)
                    time.sleep(1.0)
            for marker in markers:
                marker.set()
