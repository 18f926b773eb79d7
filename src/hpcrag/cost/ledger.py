"""The usage ledger: one row per request the gateway answered or refused, in the gateway's database.

A row carries who asked (key, user tier), where it went (tier, site, provider, endpoint, job), what it
used (tokens from vLLM's `usage`), what it cost (tokens times the endpoint's dollars per token at that
moment, kept in the row so that reports add up exactly) and why it went there (the routing decision).
The gateway hands rows to a `LedgerWriter`, which commits them in groups from its own thread; the
gateway sends a request's last byte only after its row is committed, so an answered request is never
missing from the ledger, even when the gateway is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.util import sqlite

log = logging.getLogger(__name__)
MAX_TEXT_CHARS = 512  # a text column (model name, outcome) is for reading, not for storing payloads
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
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        sqlite.initialise(self.path, SCHEMA, "the gateway database", DATABASE_FIX)

    def insert(self, records: list[RequestRecord], db: sqlite3.Connection | None = None) -> None:
        """Insert `records` in one transaction, on `db` if given (the writer keeps one open)."""
        rows = [[_column(k, v) for k, v in asdict(r).items()] for r in records]
        if db is None:
            with sqlite.transaction(self.path) as opened:
                opened.executemany(_INSERT, rows)
            return
        with sqlite.transaction_on(db):
            db.executemany(_INSERT, rows)

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


def _column(name: str, value: Any) -> Any:
    if name == "decision":
        return json.dumps(value, sort_keys=True, default=str)  # ASCII: escapes lone surrogates too
    if isinstance(value, str):
        return storable_text(value)
    return value


def storable_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` as SQLite can store it: lone surrogates escaped (they are not UTF-8), at most `limit` chars."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _decode(row: sqlite3.Row) -> RequestRecord:
    data = dict(row)
    data["decision"] = json.loads(data["decision"] or "{}")
    return RequestRecord(**data)


class LedgerWriter:
    """Writes rows from a thread of its own, with group commit.

    `commit()` returns once the row is in the database (True), or once it is known that it cannot be
    (False): rows that arrive while one transaction is committing go together into the next, so a busy
    gateway pays one fsync per batch, not per row. `record()` hands a row over without waiting (for a
    request whose caller is gone). The thread survives any one bad row: a batch that fails is written
    row by row, and a row that still cannot be written is dropped, counted and logged. A locked, busy or
    full database is waited out, rows kept; `stalled_s` tells how long the current write has waited.

    `synchronous` is SQLite's: "full" (the default) makes a committed row survive a power cut, "normal"
    one that survives the gateway being killed but not the machine losing power, without an fsync per
    commit.
    """

    def __init__(self, ledger: Ledger, batch: int = 4096, synchronous: str = "full") -> None:
        self.ledger = ledger
        self.batch = batch
        self.synchronous = synchronous
        self.rows_written = 0
        self.rows_dropped = 0
        self._db: sqlite3.Connection | None = None
        self._writing_since: float | None = None
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stalled_s(self) -> float:
        """How long the write in progress has taken so far (0 when idle)."""
        since = self._writing_since
        return 0.0 if since is None else time.monotonic() - since

    def record(self, record: RequestRecord) -> None:
        self._queue.put(_Item(record))

    async def commit(self, record: RequestRecord) -> bool:
        """True once the row is committed; False if it could not be written at all (it is logged)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def resolve(written: bool) -> None:
            loop.call_soon_threadsafe(_resolve, done, written)

        self._queue.put(_Item(record, resolve))
        return await done

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every row handed over so far is written (or dropped)."""
        if not self.alive:
            raise HpcragError(
                f"the usage ledger writer for {self.ledger.path} has stopped; see the log and restart"
            )
        flushed = threading.Event()
        self._queue.put(_Item(None, lambda _: flushed.set()))
        if not flushed.wait(timeout):
            raise HpcragError(f"the usage ledger {self.ledger.path} did not take its rows in {timeout:.0f} s")

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then end the thread and its connection."""
        if self.alive:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # close once this batch is in
                    break
                items.append(item)
            written: set[int] = set()
            try:
                written = self._write([item.record for item in items if item.record is not None])
            except Exception:  # never let one batch end the thread: its rows are logged as lost
                lost = sum(item.record is not None for item in items)
                self.rows_dropped += lost
                log.exception("usage ledger %s: %d rows lost", self.ledger.path, lost)
            for item in items:
                if item.done is not None:
                    with contextlib.suppress(RuntimeError):  # the waiter's event loop has closed
                        item.done(item.record is None or id(item.record) in written)
        if self._db is not None:
            self._db.close()

    def _write(self, records: list[RequestRecord]) -> set[int]:
        """Insert `records`; the ids (id()) of those written."""
        if not records:
            return set()
        self._writing_since = time.monotonic()
        try:
            self._insert_waiting_out_contention(records)
            return {id(r) for r in records}
        except Exception:
            if len(records) == 1:
                self.rows_dropped += 1
                log.exception(
                    "usage ledger %s: row of request %s lost", self.ledger.path, records[0].request_id
                )
                return set()
        finally:
            self._writing_since = None
        # One row spoiled the batch: write the others one at a time.
        return set().union(*(self._write([record]) for record in records))

    def _insert_waiting_out_contention(self, records: list[RequestRecord]) -> None:
        while True:
            try:
                self.ledger.insert(records, self._connection())
                self.rows_written += len(records)
                return
            except sqlite3.OperationalError as exc:
                self._reconnect()
                if not _transient(exc):
                    raise
                log.error("usage ledger %s: %s; retrying in 1 s", self.ledger.path, exc)
                time.sleep(1.0)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite.open_connection(self.ledger.path)
            self._db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        return self._db

    def _reconnect(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def _transient(exc: sqlite3.OperationalError) -> bool:
    """Locked, busy or full: it passes, so the rows wait. Anything else (no table, read-only, I/O) does
    not, and the rows are dropped and logged instead of holding every request up."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "full" in text


@dataclass
class _Item:
    record: RequestRecord | None
    done: Callable[[bool], object] | None = None


def _resolve(future: asyncio.Future[bool], written: bool) -> None:
    if not future.done():
        future.set_result(written)
