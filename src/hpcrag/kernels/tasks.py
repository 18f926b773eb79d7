"""List-major work planning shared by the kernels: (query, list) pairs grouped into tasks of one
range of a list's rows and up to 16 queries that probe the list, and the assembly of the candidate
rows the kernels write (one per task slot) back into per-query candidate sets.

Every probed, non-empty list of every query is covered by exactly one task slot per row range; a
query's candidate rows are laid side by side and padded with empty slots (inf, -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TILE = 16  # queries per task: the rows of one 16x16 WMMA tile


def assemble(xp: Any, tasks: Tasks, out_keys: Any, out_ids: Any, nq: int) -> tuple[Any, Any]:
    """Candidate rows -> per query: each query's rows side by side, padded with empty slots."""
    k = out_keys.shape[1]
    width = max(1, int(tasks.rows_per_query.max(initial=0)))
    keys = xp.full((nq, width, k), np.inf, dtype=xp.float32)
    ids = xp.full((nq, width, k), -1, dtype=xp.int64)
    owner, slot = xp.asarray(tasks.row_query), xp.asarray(tasks.row_slot)
    keys[owner, slot] = out_keys
    ids[owner, slot] = out_ids
    return keys.reshape(nq, width * k), ids.reshape(nq, width * k)


@dataclass(frozen=True)
class Tasks:
    count: int
    begin: np.ndarray  # (count,) int64: first row of the task's range
    end: np.ndarray  # (count,) int64
    query: np.ndarray  # (count * 16,) query of each slot, -1 = unused
    out_row: np.ndarray  # (count * 16,) int32 candidate row of each slot, -1 = unused
    row_query: np.ndarray  # (candidate_rows,) the query of each candidate row
    row_slot: np.ndarray  # (candidate_rows,) its position among that query's rows
    rows_per_query: np.ndarray  # (nq,)

    @property
    def candidate_rows(self) -> int:
        return int(self.row_query.size)


def plan_tasks(probes: np.ndarray, offsets: np.ndarray, chunk_rows: int) -> Tasks:
    """Group (query, list) pairs list-major: per list chunk of up to `chunk_rows` rows, queries in 16s."""
    probes = np.asarray(probes)
    nq = probes.shape[0]
    query_of, slot_of = np.nonzero(probes >= 0)
    lists = probes[query_of, slot_of]
    sizes = offsets[lists + 1] - offsets[lists]
    keep = sizes > 0
    query_of, lists = query_of[keep], lists[keep]
    order = np.lexsort((query_of, lists))
    query_of, lists = query_of[order], lists[order]
    firsts = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]]) if lists.size else np.empty(0, int)
    lasts = np.r_[firsts[1:], lists.size] if lists.size else np.empty(0, int)
    begins, ends, slot_queries = [], [], []
    for first, last in zip(firsts, lasts, strict=True):
        lst = lists[first]
        queries = query_of[first:last]
        for lo in range(int(offsets[lst]), int(offsets[lst + 1]), chunk_rows):
            hi = min(lo + chunk_rows, int(offsets[lst + 1]))
            for first in range(0, queries.size, TILE):
                group = np.full(TILE, -1, dtype=np.int64)
                chunk = queries[first : first + TILE]
                group[: chunk.size] = chunk
                begins.append(lo)
                ends.append(hi)
                slot_queries.append(group)
    count = len(begins)
    query = np.concatenate(slot_queries) if count else np.empty(0, np.int64)
    used = query >= 0
    out_row = np.full(query.size, -1, dtype=np.int32)
    out_row[used] = np.arange(int(used.sum()), dtype=np.int32)
    row_query = query[used]
    # Position of each candidate row among its query's rows (a cumulative count per query).
    by_query = np.argsort(row_query, kind="stable")
    rows_per_query = np.bincount(row_query, minlength=nq)
    starts = np.concatenate([[0], np.cumsum(rows_per_query)[:-1]])
    row_slot = np.empty(row_query.size, dtype=np.int64)
    row_slot[by_query] = np.arange(row_query.size) - np.repeat(starts, rows_per_query)
    return Tasks(
        count,
        np.asarray(begins, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        query,
        out_row,
        row_query,
        row_slot,
        rows_per_query,
    )
