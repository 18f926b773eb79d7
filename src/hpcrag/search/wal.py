"""The update log: every acknowledged add, delete and upsert of an index, durable before it is answered.

One append-only file beside the shards, `updates.wal`, holds the updates since the shards were
written (the manifest's `base_seq`). Each record is

    magic "HUW1" | seq u64 | payload length u64 | crc32 of the header u32 | crc32 of payload u32 | payload

where the payload is a small JSON header and an .npz of the arrays (no pickles). An update is
acknowledged only after its record is written and fsynced, so it survives the crash of any process.

One writer at a time, across processes and replica jobs: a writer holds an exclusive lock on
`updates.lock`, first reads what other writers appended (the caller applies it), then appends. A
writer killed mid-record (or a power loss) leaves a torn tail: a record cut short or running into
zeros; readers stop before it, and the next writer, holding the lock, cuts it off. The header has
its own checksum, so a damaged length cannot pass for a torn tail; a bad record with data after it
other than zeros is damage, never a torn tail, and is refused with the file and offset. Records are
numbered without gaps, so every replica that has read up to seq S holds the same state.

An index that runs updates and a rank that dies: the MPI job ends, and at the next open every rank
replays the log, so whatever was acknowledged is there and nothing else is.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.layout import MANIFEST, IndexFormatError, read_manifest
from hpcrag.util.npy_headers import HEADER_LOCK

LOG = "updates.wal"
WRITER_LOCK = "updates.lock"
SERVING_LOCK = "serving.lock"
MAGIC = b"HUW1"
HEADER = struct.Struct("<4sQQII")  # magic, seq, payload length, header crc, payload crc
HEADER_CHECKED = 20  # the bytes the header crc covers: magic, seq, length


class LogWriteError(HpcragError):
    """The log could not be written (disk full, read-only): the service's fault, not the request's."""


@dataclass(frozen=True)
class Update:
    """One logged change. put: rows (ids, lists, vectors, attributes) replace any live row of the same
    id and are added to their lists, and, in an index built with `--replicate`, each row's second copy
    to the list `copies` names (-1: none; `replication.py`); delete: ids become tombstones; schema:
    attribute columns added."""

    kind: str
    ids: np.ndarray
    lists: np.ndarray | None = None
    vectors: np.ndarray | None = None
    attributes: np.ndarray | None = None
    columns: dict[str, str] | None = None
    seq: int = 0
    copies: np.ndarray | None = None

    def payload(self) -> bytes:
        arrays = {"ids": self.ids}
        for name in ("lists", "vectors", "attributes", "copies"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        body = io.BytesIO()
        np.savez(body, **arrays)
        head = json.dumps({"kind": self.kind, "columns": self.columns}).encode()
        return struct.pack("<I", len(head)) + head + body.getvalue()

    @classmethod
    def from_payload(cls, payload: bytes, seq: int) -> Update:
        (length,) = struct.unpack_from("<I", payload)
        head = json.loads(payload[4 : 4 + length])
        with HEADER_LOCK, np.load(io.BytesIO(payload[4 + length :]), allow_pickle=False) as arrays:
            values = {name: arrays[name] for name in arrays.files}
        return cls(kind=head["kind"], columns=head["columns"], seq=seq, **values)


def encode_record(update: Update, seq: int) -> bytes:
    payload = update.payload()
    head = MAGIC + struct.pack("<QQ", seq, len(payload))
    return HEADER.pack(MAGIC, seq, len(payload), zlib.crc32(head), zlib.crc32(payload)) + payload


class UpdateLog:
    """A reader (and, under `writing()`, the writer) of one index's update log."""

    def __init__(self, root: Path, base_seq: int) -> None:
        self.root = Path(root)
        self.path = self.root / LOG
        self.base_seq = base_seq
        self.last_seq = base_seq  # the last record read (or written) by this process
        self.offset = 0  # where the next unread record begins

    def has_new(self) -> bool:
        """Whether the log has grown past what this process has read (one stat, no read)."""
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def read_new(self) -> list[Update]:
        """Records appended since the last call, in order; stops before a torn (incomplete) tail."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        updates, used = self._parse(data)
        self.offset += used
        return updates

    def _parse(self, data: bytes) -> tuple[list[Update], int]:
        updates, position = [], 0
        while len(data) - position >= HEADER.size:
            magic, seq, length, head_crc, crc = HEADER.unpack_from(data, position)
            end = position + HEADER.size + length
            if magic != MAGIC or zlib.crc32(data[position : position + HEADER_CHECKED]) != head_crc:
                if not any(data[position + HEADER_CHECKED :]):
                    break  # zeros after a crash: the tail of a record that never reached the disk
                self._damaged(position, "bad record header")
            if end > len(data):
                break  # a record still being written, or cut short by a crash
            payload = data[position + HEADER.size : end]
            if zlib.crc32(payload) != crc:
                if not any(data[end:]):
                    # The last record (only zeros after it): written partly, as a crash leaves it, so
                    # never acknowledged; like SQLite's and LevelDB's logs, the tail is dropped.
                    break
                self._damaged(position, "checksum mismatch")
            if seq != self.last_seq + 1:
                self._damaged(position, f"record {seq} follows {self.last_seq}")
            try:
                updates.append(Update.from_payload(payload, seq))
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                self._damaged(position, f"unreadable record ({exc})")
            self.last_seq = seq
            position = end
        return updates, position

    def _damaged(self, position: int, why: str) -> None:
        raise IndexFormatError(
            f"{self.path} is damaged at byte {self.offset + position} ({why}); the updates after it "
            "cannot be trusted: restore the index from a copy, or rebuild it"
        )

    @contextmanager
    def writing(self) -> Iterator[list[Update]]:
        """Hold the writer lock; yields the records other writers appended since our last read, which
        the caller applies before it validates and appends its own. Cuts off a torn tail."""
        try:
            lock_file = open(self.root / WRITER_LOCK, "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise LogWriteError(
                f"cannot write to the index in {self.root} ({exc.strerror}): updates need write access"
            ) from None
        with lock_file as lock:
            _lock(lock, fcntl.LOCK_EX, self.root)
            try:
                manifest = self.root / MANIFEST
                if manifest.exists() and read_manifest(self.root).base_seq != self.base_seq:
                    # Compacted (or rebuilt) since this process opened it: its log is another file now.
                    raise HpcragError(
                        f"the index in {self.root} was compacted or rebuilt after this process opened it; "
                        "reopen it (restart the service) before writing"
                    )
                unseen = self.read_new()
                if self.has_new():
                    # Holding the lock, no one is writing: the bytes past the last record are torn.
                    self._cut_back()
                yield unseen
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _cut_back(self) -> None:
        """Remove what a failed append may have left after the last whole record."""
        try:
            with open(self.path, "r+b") as handle:
                handle.truncate(self.offset)
                os.fsync(handle.fileno())
        except OSError:
            pass  # the next writer cuts a torn tail off anyway

    def append(self, update: Update) -> int:
        """Write one record durably (call inside `writing()`); returns its sequence number."""
        seq = self.last_seq + 1
        record = encode_record(update, seq)
        created = not self.path.exists()
        try:
            with open(self.path, "ab") as handle:
                handle.write(record)
                handle.flush()
                os.fsync(handle.fileno())
            if created:
                _fsync_dir(self.root)
        except OSError as exc:
            self._cut_back()
            raise LogWriteError(
                f"cannot write the update log {self.path} ({exc.strerror}); the update was not applied"
            ) from None
        self.offset += len(record)
        self.last_seq = seq
        return seq


def _lock(handle: Any, how: int, root: Path) -> None:
    try:
        fcntl.flock(handle, how)
    except OSError as exc:  # Lustre mounted without flock (ENOSYS), NFS without its lock daemon (ENOLCK)
        raise LogWriteError(
            f"cannot lock files in {root} ({exc.strerror}): updates need file locks that every node "
            "sees (Lustre: mount with -o flock; NFS: run the lock service)"
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ServingLock:
    """Held (shared) while a process has the index open, so that an offline compaction can tell."""

    def __init__(self, root: Path) -> None:
        try:
            self._handle: Any = open(Path(root) / SERVING_LOCK, "a+b")  # noqa: SIM115 (held until close)
        except OSError:
            self._handle = None  # a read-only index: it cannot be compacted (or updated) anyway
            return
        try:
            _lock(self._handle, fcntl.LOCK_SH, Path(root))
        except LogWriteError:  # no file locks here: searching works, compaction cannot tell
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()


def served_elsewhere(root: Path) -> bool:
    """True when some process has the index open (holds the serving lock)."""
    path = Path(root) / SERVING_LOCK
    if not path.exists():
        return False
    with open(path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False
