"""Segments: rows grouped by inverted list, the unit every scan reads.

A shard's base segment is loaded from its folder and checked against the manifest (on the CPU the
arrays stay memory-mapped; on the GPU they are copied to the device once). Updates add small delta
segments beside it (`live.py`). Every segment spans all `nlist` lists, most of them empty, so a
scan addresses lists by their global id in any segment. Attributes and the live-row mask stay on
the host: they are read by NumPy to build the masks a scan takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.search import layout
from hpcrag.search.attributes import MISSING
from hpcrag.search.layout import IndexFormatError
from hpcrag.search.local_kinds import FILES, load_local


@dataclass(eq=False)
class Segment:
    vectors: Any  # (n, dim) float16|float32
    ids: Any  # (n,) int64
    sqnorms: Any  # (n,) float32
    offsets: np.ndarray  # (nlist+1,) int64, always on the host: it drives the scan loop
    attributes: np.ndarray  # (n, A) int64 on the host, MISSING where a row lacks one
    live: np.ndarray | None = None  # (n,) uint8 on the host, 0 = deleted; None while nothing is
    delta: bool = False  # rows added since the shard was written
    cache: dict[str, Any] = field(default_factory=dict)  # a backend's derived copies (device lists)
    local: Any = None  # the shard's own index (hnsw, ivf-pq, cagra) over the base rows, else None
    replica: np.ndarray | None = None  # (n,) uint8 on the host, 1 = a vector's second copy; None: none

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def list_of_rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.offsets.size - 1, dtype=np.int64), np.diff(self.offsets))

    def live_rows(self) -> int:
        return self.rows if self.live is None else int(self.live.sum())

    def live_vectors(self) -> int:
        """Live rows less second copies: each vector counted once over all shards."""
        if self.replica is None:
            return self.live_rows()
        first = self.replica == 0
        return int(first.sum() if self.live is None else (first & (self.live == 1)).sum())


def widen_attributes(attributes: np.ndarray, columns: int) -> np.ndarray:
    """`attributes` with MISSING columns appended up to `columns` (the schema grew)."""
    if attributes.shape[1] >= columns:
        return attributes
    extra = np.full((attributes.shape[0], columns - attributes.shape[1]), MISSING, dtype=np.int64)
    return np.concatenate([attributes, extra], axis=1)


def load_shard(root: Path, manifest: layout.Manifest, shard: int, verify: bool, xp: Any) -> Segment:
    """Load and check one shard; every inconsistency names the file and says to rebuild."""
    entry = manifest.shards[shard]
    folder = layout.shard_dir(root, shard)
    missing = set(layout.SHARD_ARRAYS) - set(entry.files)
    if missing:
        raise IndexFormatError(f"{root / layout.MANIFEST}: shard {shard} lacks {sorted(missing)}")
    optional = [name for name in (layout.ATTRIBUTES, layout.REPLICA) if name in entry.files]
    names = [*layout.SHARD_ARRAYS, *optional]
    arrays = {name: layout.load_array(folder / name, entry.files[name], verify) for name in names}
    n = entry.ntotal
    expected = {
        "vectors.npy": ((n, manifest.dim), manifest.dtype),
        "ids.npy": ((n,), "int64"),
        "sqnorms.npy": ((n,), "float32"),
        "list_offsets.npy": ((manifest.nlist + 1,), "int64"),
        layout.ATTRIBUTES: ((n, len(manifest.attributes)), "int64"),
        layout.REPLICA: ((n,), "uint8"),
    }
    for name in names:
        shape, dtype = expected[name]
        array = arrays[name]
        if array.shape != shape or array.dtype != np.dtype(dtype):
            raise IndexFormatError(
                f"{folder / name} is damaged: {array.dtype}{list(array.shape)} where the manifest implies "
                f"{dtype}{list(shape)}; rebuild the index"
            )
    offsets = np.asarray(arrays["list_offsets.npy"])
    if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise IndexFormatError(
            f"{folder / 'list_offsets.npy'} is damaged (offsets out of order); rebuild the index"
        )
    attributes = arrays.get(layout.ATTRIBUTES)
    if attributes is None:
        attributes = np.full((n, len(manifest.attributes)), MISSING, dtype=np.int64)
    on_device = [xp.asarray(arrays[name]) for name in ("vectors.npy", "ids.npy", "sqnorms.npy")]
    replica = arrays.get(layout.REPLICA)
    if replica is not None and not manifest.replicas:
        raise IndexFormatError(
            f"{folder / layout.REPLICA} marks copies the manifest does not count (replicas 0); "
            "rebuild the index"
        )
    segment = Segment(
        *on_device,
        offsets=offsets,
        attributes=np.asarray(attributes),
        replica=None if replica is None else np.asarray(replica),
    )
    kind_file = FILES.get(manifest.local["kind"])
    if kind_file is not None:
        if kind_file not in entry.files:
            raise IndexFormatError(f"{root / layout.MANIFEST}: shard {shard} lacks its {kind_file}")
        layout.check_file(folder / kind_file, entry.files[kind_file], verify)
        try:
            segment.local = load_local(manifest.local, folder / kind_file)
        except RuntimeError as exc:  # faiss and cuVS report unreadable files as RuntimeError
            raise IndexFormatError(f"{folder / kind_file} is damaged ({exc}); rebuild the index") from None
    return segment
