"""The inverted lists one rank owns, loaded from its shards and checked against the manifest.

A rank may own several shards (fewer ranks than shards); lists are addressed by their global id.
On the CPU the arrays stay memory-mapped; on the GPU they are copied to the device once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.search import layout
from hpcrag.search.layout import IndexFormatError


@dataclass
class ShardArrays:
    vectors: Any  # (n, dim) float16|float32
    ids: Any  # (n,) int64
    sqnorms: Any  # (n,) float32
    offsets: np.ndarray  # (nlist+1,) int64, always on the host: it drives the scan loop


class LocalLists:
    """Global list id -> that list's vectors, ids and squared norms, for the lists this rank owns."""

    def __init__(self, shards: list[ShardArrays], list_shard: np.ndarray, owned_shards: list[int]) -> None:
        self.shards = shards
        self.slot_of_shard = {shard: slot for slot, shard in enumerate(owned_shards)}
        self.list_shard = list_shard
        self.owned = np.isin(list_shard, owned_shards)

    def size(self, list_id: int) -> int:
        arrays = self.shards[self.slot_of_shard[int(self.list_shard[list_id])]]
        return int(arrays.offsets[list_id + 1] - arrays.offsets[list_id])

    def get(self, list_id: int) -> tuple[Any, Any, Any]:
        arrays = self.shards[self.slot_of_shard[int(self.list_shard[list_id])]]
        lo, hi = int(arrays.offsets[list_id]), int(arrays.offsets[list_id + 1])
        return arrays.vectors[lo:hi], arrays.ids[lo:hi], arrays.sqnorms[lo:hi]


def load_shard(root: Path, manifest: layout.Manifest, shard: int, verify: bool, xp: Any) -> ShardArrays:
    """Load and check one shard; every inconsistency names the file and says to rebuild."""
    entry = manifest.shards[shard]
    folder = layout.shard_dir(root, shard)
    missing = set(layout.SHARD_ARRAYS) - set(entry.files)
    if missing:
        raise IndexFormatError(f"{root / layout.MANIFEST}: shard {shard} lacks {sorted(missing)}")
    arrays = {
        name: layout.load_array(folder / name, entry.files[name], verify) for name in layout.SHARD_ARRAYS
    }
    n = entry.ntotal
    expected = {
        "vectors.npy": ((n, manifest.dim), manifest.dtype),
        "ids.npy": ((n,), "int64"),
        "sqnorms.npy": ((n,), "float32"),
        "list_offsets.npy": ((manifest.nlist + 1,), "int64"),
    }
    for name, (shape, dtype) in expected.items():
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
    on_device = [xp.asarray(arrays[name]) for name in ("vectors.npy", "ids.npy", "sqnorms.npy")]
    return ShardArrays(*on_device, offsets=offsets)
