"""A persistent cache of embeddings: one SQLite file mapping a key (bytes) to a float32 vector.

Keys are opaque here (the embedding code makes them from the model's name and the text). Writes are
one transaction per `put_many`, so several processes may share a cache; the file is only a cache, and a
damaged one raises an HpcragError telling to delete it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.util.sqlite import initialise, open_connection, transaction_on

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key BLOB PRIMARY KEY,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL
) WITHOUT ROWID;
"""
# Below SQLite's oldest limit on bound variables (999), so any build of SQLite takes the IN list.
_CHUNK = 900


class EmbeddingCache:
    """`with EmbeddingCache(path) as cache: cache.put_many(...); cache.get_many(keys)`"""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        # DELETE, not WAL: the ranks of one ingest may write it from several nodes of a shared file system.
        initialise(self.path, _SCHEMA, "embedding cache", self._fix, journal="delete")
        try:
            self._db = open_connection(self.path)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    @property
    def _fix(self) -> str:
        return f"delete {self.path} (it is only a cache) and run again"

    def _error(self, exc: Exception) -> HpcragError:
        if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, disk full: not the file's fault
            return HpcragError(
                f"cannot use embedding cache {self.path} ({exc}); check its disk and permissions"
            )
        return HpcragError(f"embedding cache {self.path} is damaged ({exc}); {self._fix}")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors (float32) of those `keys` that are in the cache."""
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                rows = self._db.execute(
                    f"SELECT key, dim, vector FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for key, dim, blob in rows:
                    if len(blob) != 4 * dim:
                        raise self._error(
                            sqlite3.DatabaseError(f"a vector of {len(blob)} bytes claims {dim} floats")
                        )
                    found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store (key, vector) pairs in one transaction, replacing vectors already there."""
        rows = []
        for key, vector in items:
            flat = np.asarray(vector, dtype="<f4").reshape(-1)
            rows.append((key, flat.size, flat.tobytes()))
        try:
            with transaction_on(self._db):
                self._db.executemany(
                    "INSERT OR REPLACE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)", rows
                )
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
