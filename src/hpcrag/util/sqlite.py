"""SQLite on a shared file system: short connections, a generous busy timeout, `BEGIN IMMEDIATE` writes.

Every hpcrag database (the endpoint registry, the gateway's keys and usage ledger) is written by
several processes at once; each write is one immediate transaction, so writers queue instead of
failing, and readers in WAL mode are never blocked.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpcrag.errors import HpcragError

BUSY_TIMEOUT_S = 60.0


def initialise(path: Path, schema: str, what: str, fix: str, journal: str = "wal") -> None:
    """Create the file's folder and tables, or raise an error naming `what` it is and the `fix`.

    Several processes may do this at once (the ranks of one job): changing the journal mode does not
    wait for the busy timeout, so a "locked" answer is retried until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    mode = "wal" if journal == "wal" else "delete"
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with connect(path) as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != mode:
                    db.execute(f"PRAGMA journal_mode={mode.upper()}")
                db.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise HpcragError(f"cannot open {what} {path}: {exc}; {fix}") from None
            time.sleep(0.05)
        except (OSError, sqlite3.Error) as exc:
            raise HpcragError(f"cannot open {what} {path}: {exc}; {fix}") from None


def open_connection(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the busy timeout set."""
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=check_same_thread
    )
    db.row_factory = sqlite3.Row
    try:
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    except sqlite3.Error:
        db.close()
        raise
    return db


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = open_connection(path)
    try:
        yield db
    finally:
        db.close()


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    with connect(path) as db, transaction_on(db):
        yield db


@contextmanager
def transaction_on(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an open connection: committed when the block ends, else rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
