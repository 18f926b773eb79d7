"""The document and chunk store of one collection generation: SQLite, rows in dense-index order.

A chunk's `row` is its position in the generation's arrays (embeddings, BM25); its `chunk_id` is
stable across generations: derived from the document's id and the chunk's position in it, so that a
re-ingest replaces a document's chunks instead of adding copies. A generation's store is written once
by ingest and then only read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError, QuestionError
from hpcrag.util.sqlite import open_connection

SCHEMA = """
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    format TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    ingested_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    pii_masked INTEGER NOT NULL DEFAULT 0,
    injection_flags INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE chunks (
    row INTEGER PRIMARY KEY,
    chunk_id INTEGER NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    embed_text TEXT NOT NULL,
    heading_path TEXT NOT NULL,
    anchor TEXT,
    token_count INTEGER NOT NULL,
    injection TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX chunks_by_doc ON chunks(doc_id);
"""

# Filter keys every collection has; anything else is looked up in a document's metadata.
BUILTIN_FILTER_KEYS = ("source", "doc_id", "title", "format", "section")


def document_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def chunk_id(doc_id: str, position: int) -> int:
    """A stable positive int64: the dense index's id of the chunk."""
    digest = hashlib.blake2b(f"{doc_id}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    source: str
    title: str
    format: str
    content_hash: str
    ingested_at: float
    bytes: int
    pii_masked: int = 0
    injection_flags: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.source).name


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: int
    doc_id: str
    position: int
    text: str
    embed_text: str
    heading_path: tuple[str, ...]
    anchor: str | None
    token_count: int
    injection: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    row: int = -1


class ChunkStore:
    """Read access to one generation's store, plus `write()` to create one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise HpcragError(f"collection store {path} is missing; re-run `hpcrag rag ingest`")
        try:
            self._db = open_connection(path, check_same_thread=False)
            self._db.execute("PRAGMA query_only=ON")
            self.count = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise HpcragError(
                f"collection store {path} is damaged ({exc}); re-ingest the collection"
            ) from None
        rows = self._db.execute(
            "SELECT c.chunk_id, d.rowid FROM chunks c JOIN documents d USING(doc_id) ORDER BY c.row"
        ).fetchall()
        self._chunk_ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._sorter = np.argsort(self._chunk_ids)
        self._doc_of_row = np.array([r[1] for r in rows], dtype=np.int64)
        # Read once: a generation's store never changes, and filters consult these on every query.
        self._documents = [(r[0], _document(r)) for r in self._db.execute("SELECT rowid, * FROM documents")]
        self._filter_keys = set(BUILTIN_FILTER_KEYS) | {k for _, d in self._documents for k in d.metadata}

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def write(path: Path, documents: Iterable[DocumentRecord], chunks: Sequence[ChunkRecord]) -> None:
        """Create a new store at `path` (which must not exist); chunk rows are their order in `chunks`."""
        db = open_connection(path)
        try:
            db.executescript(SCHEMA)
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        d.doc_id,
                        d.source,
                        d.title,
                        d.format,
                        d.content_hash,
                        d.ingested_at,
                        d.bytes,
                        d.pii_masked,
                        d.injection_flags,
                        json.dumps(d.metadata, sort_keys=True),
                    )
                    for d in documents
                ],
            )
            db.executemany(
                "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        row,
                        c.chunk_id,
                        c.doc_id,
                        c.position,
                        c.text,
                        c.embed_text,
                        json.dumps(list(c.heading_path)),
                        c.anchor,
                        c.token_count,
                        json.dumps(list(c.injection)),
                        json.dumps(c.metadata, sort_keys=True),
                    )
                    for row, c in enumerate(chunks)
                ],
            )
            db.execute("COMMIT")
        finally:
            db.close()

    def documents(self) -> list[DocumentRecord]:
        return [_document(r) for r in self._db.execute("SELECT * FROM documents ORDER BY source")]

    def document_chunks(self, doc_id: str) -> list[ChunkRecord]:
        rows = self._db.execute("SELECT * FROM chunks WHERE doc_id=? ORDER BY position", (doc_id,))
        return [_chunk(r) for r in rows]

    def chunks(self, rows: Sequence[int]) -> list[ChunkRecord]:
        """The chunks at `rows`, in that order."""
        wanted = [int(r) for r in rows]
        found: dict[int, ChunkRecord] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self._db.execute(f"SELECT * FROM chunks WHERE row IN ({marks})", part):
                found[r["row"]] = _chunk(r)
        return [found[r] for r in wanted]

    def documents_by_id(self, doc_ids: Iterable[str]) -> dict[str, DocumentRecord]:
        wanted = sorted(set(doc_ids))
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(f"SELECT * FROM documents WHERE doc_id IN ({marks})", wanted)
        return {r["doc_id"]: _document(r) for r in rows}

    def chunk_ids(self) -> np.ndarray:
        """The chunk id of each row."""
        return self._chunk_ids

    def rows_of(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Rows of the given chunk ids (-1 for an id this generation does not hold)."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        if self.count == 0:
            return np.full(chunk_ids.shape, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(self._chunk_ids, chunk_ids, sorter=self._sorter), self.count - 1)
        rows = self._sorter[where]
        return np.where(self._chunk_ids[rows] == chunk_ids, rows, -1)

    def document_of_rows(self) -> np.ndarray:
        """For each row, a small integer naming its document (for per-document caps)."""
        return self._doc_of_row

    def filter_mask(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Rows whose chunk passes every filter key (values of one key are alternatives)."""
        unknown = sorted(set(filters) - self._filter_keys)
        if unknown:
            raise QuestionError(
                f"unknown filter key {unknown[0]!r}; this collection filters on: "
                f"{', '.join(sorted(self._filter_keys))}"
            )
        passing = [
            rowid
            for rowid, d in self._documents
            if all(_doc_matches(d, k, v) for k, v in filters.items() if k != "section")
        ]
        mask = np.isin(self._doc_of_row, passing)
        sections = [s.casefold() for s in filters.get("section", [])]
        if sections:  # headings are read only for a section filter, and only for the rows still in
            marks = np.flatnonzero(mask)
            for row, chunk in zip(marks, self.chunks(marks), strict=True):
                headings = [h.casefold() for h in chunk.heading_path]
                mask[row] = any(s in h for s in sections for h in headings)
        return mask


def _doc_matches(doc: DocumentRecord, key: str, values: list[str]) -> bool:
    if key == "source":
        return any(
            v in (doc.source, doc.name) or fnmatch.fnmatch(doc.source, v) or fnmatch.fnmatch(doc.name, v)
            for v in values
        )
    if key in ("doc_id", "title", "format"):
        return getattr(doc, key) in values
    return str(doc.metadata.get(key)) in values if key in doc.metadata else False


def _document(r: sqlite3.Row) -> DocumentRecord:
    return DocumentRecord(
        doc_id=r["doc_id"],
        source=r["source"],
        title=r["title"],
        format=r["format"],
        content_hash=r["content_hash"],
        ingested_at=r["ingested_at"],
        bytes=r["bytes"],
        pii_masked=r["pii_masked"],
        injection_flags=r["injection_flags"],
        metadata=json.loads(r["metadata"]),
    )


def _chunk(r: sqlite3.Row) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=r["chunk_id"],
        doc_id=r["doc_id"],
        position=r["position"],
        text=r["text"],
        embed_text=r["embed_text"],
        heading_path=tuple(json.loads(r["heading_path"])),
        anchor=r["anchor"],
        token_count=r["token_count"],
        injection=tuple(json.loads(r["injection"])),
        metadata=json.loads(r["metadata"]),
        row=r["row"],
    )
