"""The live state of the shards one rank owns: base segments plus the updates applied since.

Each owned shard is a list of segments: its base (the arrays on disk) and delta segments holding
the rows added since, grouped by list like the base. A put first turns any live row of its ids into
a tombstone (on whichever of this rank's shards holds it), then adds its rows to the shards this
rank owns, and the second copies of replicated rows (`replication.py`) to theirs, as the build
stores a boundary vector twice; a delete only makes tombstones. Tombstones are a per-segment byte
mask that every scan reads, so a deleted id disappears from the very next search. Deltas merge
pairwise while the newest is at least half the size of the one before (dropping dead rows), so a
shard keeps O(log n) of them and each row is copied O(log n) times. `compact` (compact.py) folds
everything into new bases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.arrays import to_numpy
from hpcrag.search.filters import Filter
from hpcrag.search.layout import IndexFormatError
from hpcrag.search.store import Segment, widen_attributes

MAX_DELTAS = 24  # a safety net: the pairwise rule keeps far fewer for any realistic stream

Part = tuple[Segment, np.ndarray | None]  # a segment and the rows a scan may read (None: all)


class _SortedIds:
    """Where each id sits in a base segment: one sort at open, binary search per lookup."""

    def __init__(self, ids: Any) -> None:
        host = np.asarray(to_numpy(ids), dtype=np.int64)
        self.order = np.argsort(host, kind="stable")
        self.sorted = host[self.order]

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id, whether it is there at all)."""
        if self.sorted.size == 0:
            return np.zeros(ids.size, np.int64), np.zeros(ids.size, bool)
        position = np.minimum(np.searchsorted(self.sorted, ids), self.sorted.size - 1)
        return self.order[position], self.sorted[position] == ids


class LiveShards:
    def __init__(
        self, bases: dict[int, Segment], list_shard: np.ndarray, nlist: int, columns: int, xp: Any
    ) -> None:
        self.xp = xp
        self.list_shard = list_shard
        self.nlist = nlist
        self.columns = columns
        self.owned_shards = sorted(bases)
        self.owned = np.isin(list_shard, self.owned_shards)  # per list: does this rank scan it
        self.shards: dict[int, list[Segment]] = {shard: [bases[shard]] for shard in self.owned_shards}
        self._base_ids = {shard: _SortedIds(bases[shard].ids) for shard in self.owned_shards}
        for shard, ids in self._base_ids.items():
            repeated = ids.sorted[1:][ids.sorted[1:] == ids.sorted[:-1]]
            if repeated.size:  # a delete would reach one of the rows, and answers would hold it twice
                raise IndexFormatError(f"shard {shard} holds id {int(repeated[0])} twice; rebuild the index")
        # id -> {shard: (delta segment, row)}: a replicated row has a copy in a second shard
        self._delta_home: dict[int, dict[int, tuple[Segment, int]]] = {}

    # -- reading --------------------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Segment]]:
        return [(shard, segment) for shard in self.owned_shards for segment in self.shards[shard]]

    def live_vectors(self) -> dict[int, int]:
        """Per owned shard, its live rows less the second copies of replicated vectors."""
        return {shard: sum(s.live_vectors() for s in self.shards[shard]) for shard in self.owned_shards}

    def parts(self, flt: Filter | None) -> tuple[list[Part], dict[int, int]]:
        """Every non-empty segment with the rows a scan may read, and the count of those per shard."""
        parts: list[Part] = []
        counts = dict.fromkeys(self.owned_shards, 0)
        for shard, segment in self.segments():
            if segment.rows == 0:
                continue
            mask = segment.live
            if flt is not None:
                match = flt.mask(segment.attributes)
                mask = match.astype(np.uint8) if mask is None else (mask & match).astype(np.uint8)
            counts[shard] += segment.rows if mask is None else int(np.count_nonzero(mask))
            parts.append((segment, mask))
        return parts, counts

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Per id: does a live row of this rank hold it."""
        found = np.zeros(ids.size, dtype=bool)
        for shard in self.owned_shards:
            base = self.shards[shard][0]
            rows, hit = self._base_ids[shard].rows(ids)
            found |= hit & (True if base.live is None else base.live[rows] == 1)
        found |= np.fromiter((int(i) in self._delta_home for i in ids), dtype=bool, count=ids.size)
        return found

    # -- changing -------------------------------------------------------------------------------

    def delete(self, ids: np.ndarray) -> int:
        """Tombstone every live row of `ids` on this rank; returns how many were live here."""
        removed = 0
        for shard in self.owned_shards:
            base = self.shards[shard][0]
            rows, hit = self._base_ids[shard].rows(ids)
            if base.live is not None:
                hit &= base.live[rows] == 1
            if hit.any():
                if base.live is None:
                    base.live = np.ones(base.rows, dtype=np.uint8)
                base.live[rows[hit]] = 0
                removed += int(hit.sum())
        for ident in ids.tolist():
            for segment, row in self._delta_home.pop(ident, {}).values():
                if segment.live is None:
                    segment.live = np.ones(segment.rows, dtype=np.uint8)
                segment.live[row] = 0
                removed += 1
        return removed

    def put(
        self,
        ids: np.ndarray,
        lists: np.ndarray,
        vectors: np.ndarray,
        attributes: np.ndarray,
        copies: np.ndarray | None = None,
    ) -> int:
        """Replace or add rows (ids unique within the call), each also in the list `copies` names
        (-1: no copy); returns how many rows, copies included, land on this rank."""
        self.delete(ids)
        source = np.arange(ids.size)  # per row to store: the update's row it holds
        stored_lists, replica = lists, np.zeros(ids.size, dtype=np.uint8)
        if copies is not None:
            copied = np.flatnonzero(copies >= 0)
            if (self.list_shard[copies[copied]] == self.list_shard[lists[copied]]).any():
                raise IndexFormatError(
                    "an update record gives a row its second copy in its own shard: the update log is "
                    "damaged; restore the index from a copy, or rebuild it"
                )
            source = np.concatenate([source, copied])
            stored_lists = np.concatenate([lists, copies[copied]])
            replica = np.concatenate([replica, np.ones(copied.size, dtype=np.uint8)])
        shard_of = self.list_shard[stored_lists]
        added = 0
        for shard in self.owned_shards:
            mine = np.flatnonzero(shard_of == shard)
            if mine.size == 0:
                continue
            rows = source[mine]
            segment = self._segment(
                ids[rows], stored_lists[mine], vectors[rows], attributes[rows], replica[mine]
            )
            self.shards[shard].append(segment)
            self._register(shard, segment)
            self._merge_tail(shard)
            added += mine.size
        return added

    def widen(self, columns: int) -> None:
        """The schema grew to `columns` attributes: every row lacks the new ones."""
        self.columns = columns
        for _, segment in self.segments():
            segment.attributes = widen_attributes(segment.attributes, columns)

    def _segment(
        self, ids: np.ndarray, lists: np.ndarray, vectors: Any, attributes: np.ndarray, replica: np.ndarray
    ) -> Segment:
        order = np.argsort(lists, kind="stable")
        host_vectors = np.asarray(to_numpy(vectors))[order]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.nlist))]).astype(np.int64)
        sqnorms = (host_vectors.astype(np.float32) ** 2).sum(axis=1, dtype=np.float32)
        xp = self.xp
        return Segment(
            vectors=xp.asarray(host_vectors),
            ids=xp.asarray(np.ascontiguousarray(ids[order], dtype=np.int64)),
            sqnorms=xp.asarray(sqnorms),
            offsets=offsets,
            attributes=widen_attributes(np.asarray(attributes, dtype=np.int64)[order], self.columns),
            delta=True,
            replica=replica[order] if replica.any() else None,
        )

    def _register(self, shard: int, segment: Segment) -> None:
        for row, ident in enumerate(to_numpy(segment.ids).tolist()):
            if segment.live is None or segment.live[row]:
                self._delta_home.setdefault(ident, {})[shard] = (segment, row)

    def _merge_tail(self, shard: int) -> None:
        segments = self.shards[shard]
        while len(segments) > 2 and (
            segments[-2].live_rows() <= 2 * segments[-1].live_rows() or len(segments) > MAX_DELTAS + 1
        ):
            newer = segments.pop()
            older = segments.pop()
            merged = self._merged(older, newer)
            segments.append(merged)
            self._register(shard, merged)

    def _merged(self, older: Segment, newer: Segment) -> Segment:
        pieces = []
        for segment in (older, newer):
            keep = np.arange(segment.rows) if segment.live is None else np.flatnonzero(segment.live)
            pieces.append(
                (
                    np.asarray(to_numpy(segment.ids))[keep],
                    segment.list_of_rows()[keep],
                    np.asarray(to_numpy(segment.vectors))[keep],
                    segment.attributes[keep],
                    np.zeros(keep.size, np.uint8) if segment.replica is None else segment.replica[keep],
                )
            )
        return self._segment(*(np.concatenate(column) for column in zip(*pieces, strict=True)))
