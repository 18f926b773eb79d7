"""The index on disk: one directory, a manifest, the centroids and one folder of arrays per shard.

    DIR/manifest.json       format and version, dim, metric, dtype, nlist, nshards, list->shard map,
                            list sizes, and size + sha256 of every array file
    DIR/centroids.npy       (nlist, dim) float32 coarse centroids
    DIR/shard-0003/         vectors.npy (n, dim) float16|float32, rows grouped by list
                            ids.npy (n,) int64, sqnorms.npy (n,) float32 (for l2),
                            list_offsets.npy (nlist+1,) int64: list L is rows [off[L], off[L+1])
                            attributes.npy (n, A) int64 when the index declares attributes
                            replica.npy (n,) uint8, 1 for a boundary vector's second copy, when
                            the build replicated (`replication.py`)
                            hnsw.faiss | ivfpq.faiss | cagra.bin: the shard's own index when its
                            local kind is not ivf-flat (`local_kinds.py`)
    DIR/updates.wal         updates since the shards were written (`wal.py`), replayed at open

Loading checks the version, every file's size and (by default) its checksum, and refuses a damaged
index with a message naming the file. Writers produce files through a temporary name and a rename.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.util.files import atomic_output, write_atomic

FORMAT = "hpcrag-ivf"
# 2: hnsw and ivf-pq shards (the manifest's `local`) may take updates, which a reader of version 1
# would ignore; an index whose shards are lists, or that no update has touched, reads the same in 1.
FORMAT_VERSION = 2
# 3: some vectors are stored in two shards (`replicas` > 0); a reader of 1 or 2 would return them twice.
REPLICAS_VERSION = 3
# 4: the update log holds second copies of added rows (`wal.Update.copies`), which a reader of 3 cannot
# parse; `compact` folds the log in, and stamps 3 again.
LOGGED_COPIES_VERSION = 4
READS_VERSIONS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
CENTROIDS = "centroids.npy"
SHARD_ARRAYS = ("vectors.npy", "ids.npy", "sqnorms.npy", "list_offsets.npy")
ATTRIBUTES = "attributes.npy"
REPLICA = "replica.npy"


class IndexFormatError(HpcragError):
    """The directory is not a usable index: missing, damaged or of another format version."""


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardEntry:
    shard: int
    ntotal: int
    files: dict[str, FileEntry]


@dataclass(frozen=True)
class Manifest:
    dim: int
    metric: str
    dtype: str
    nlist: int
    nshards: int
    ntotal: int
    list_shard: list[int]
    list_counts: list[int]
    centroids: FileEntry
    shards: list[ShardEntry]
    build: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)  # name -> type, in column order
    base_seq: int = 0  # the last update folded into the shards; the log goes on from there
    local: dict[str, Any] = field(default_factory=lambda: {"kind": "ivf-flat"})  # shard-local kind
    replicas: int = 0  # rows that are a boundary vector's second copy (ntotal counts each vector once)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def fingerprint(self) -> str:
        """One digest of every file's checksum: two indexes with equal fingerprints hold the same data."""
        digest = hashlib.sha256(self.centroids.sha256.encode())
        for shard in self.shards:
            for name in sorted(shard.files):
                digest.update(shard.files[name].sha256.encode())
        return digest.hexdigest()[:32]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["centroids"] = FileEntry(**data["centroids"])
        data["shards"] = [
            ShardEntry(s["shard"], s["ntotal"], {n: FileEntry(**f) for n, f in s["files"].items()})
            for s in data["shards"]
        ]
        return cls(**data)


def format_version_for(replicas: int) -> int:
    """The version a writer stamps: the oldest that reads the index right."""
    return REPLICAS_VERSION if replicas else FORMAT_VERSION


def shard_dir(root: Path, shard: int) -> Path:
    return Path(root) / f"shard-{shard:04d}"


def file_entry(path: Path) -> FileEntry:
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return FileEntry(bytes=path.stat().st_size, sha256=digest)


def save_array(path: Path, array: np.ndarray) -> FileEntry:
    """Write one .npy through a temporary file and a rename; return its size and checksum."""
    with atomic_output(path) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return file_entry(path)


def save_bytes(path: Path, data: np.ndarray) -> FileEntry:
    """Write raw bytes (a library's serialised index) through a temporary file and a rename."""
    with atomic_output(path) as handle:
        handle.write(data.tobytes())
    return file_entry(path)


def write_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(Path(root) / MANIFEST, manifest.to_json())


def read_manifest(root: Path) -> Manifest:
    """The manifest of the index in `root`, or an IndexFormatError saying what is wrong with it."""
    root = Path(root)
    path = root / MANIFEST
    if root.is_file():
        raise IndexFormatError(
            f"{root} is a file, not an index directory: give the folder `index build --out` wrote"
        )
    if not root.is_dir():
        raise IndexFormatError(f"index directory not found: {root}")
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing: {root} is not an hpcrag index (build one first)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable manifest ({exc}); rebuild the index") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not an {FORMAT} manifest")
    version = data.get("format_version")
    if type(version) is not int or version not in READS_VERSIONS:
        newer = type(version) is int and version > max(READS_VERSIONS)
        raise IndexFormatError(
            f"{path}: index format version {version}, this hpcrag reads versions "
            f"{', '.join(map(str, READS_VERSIONS))}; "
            + ("it was written by a newer hpcrag: upgrade hpcrag" if newer else "rebuild the index")
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise IndexFormatError(f"{path}: damaged manifest ({exc}); rebuild the index") from None
    if (
        type(manifest.replicas) is not int
        or manifest.replicas < 0
        or (manifest.replicas and version < REPLICAS_VERSION)
    ):
        raise IndexFormatError(
            f"{path}: damaged manifest (replicas {manifest.replicas!r} in format version {version}); "
            "rebuild the index"
        )
    return manifest


def check_file(path: Path, entry: FileEntry, verify: bool) -> None:
    """Refuse a missing, truncated or (when verifying) altered file, naming it."""
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; the index is incomplete, rebuild it")
    size = path.stat().st_size
    if size != entry.bytes:
        raise IndexFormatError(
            f"{path} is damaged: {size} bytes where the manifest records {entry.bytes}; rebuild the index"
        )
    if verify and file_entry(path).sha256 != entry.sha256:
        raise IndexFormatError(
            f"{path} is damaged: its checksum differs from the manifest; rebuild the index"
        )


def load_array(path: Path, entry: FileEntry, verify: bool, mmap: bool = True) -> np.ndarray:
    """A checked array, memory-mapped unless empty (an empty array cannot be mapped)."""
    check_file(path, entry, verify)
    try:
        header = np.load(path, mmap_mode="r")
        if not mmap or header.size == 0:
            return np.load(path)
        return header
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{path} is damaged ({exc}); rebuild the index") from None
