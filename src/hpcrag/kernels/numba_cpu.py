"""The CPU scan: FP16 vectors, FP32 accumulation, bounded heaps, threads over list-major tasks.

Numba's CPU target has no float16 type, so FP16 vectors are read as their raw 16-bit patterns and
turned into float32 through a 65,536-entry table (exact, and small enough to stay in cache); FP32
storage is read as it is.

The work is list-major (`tasks.plan_tasks`): a thread takes a range of up to CHUNK_ROWS rows of one
list, decodes it to FP32 once, and scores it against the up-to-16 queries probing that list, each
into its own bounded max-heap of k on (key, id), key being the distance (l2) or the negated score
(ip). A second pass merges each query's heaps into its answer, so ties are broken by the smaller id
exactly as the search's merge does, and no (queries x rows) matrix is ever formed.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import overload

from hpcrag.kernels.tasks import TILE, plan_tasks

METRIC_IP = 0
METRIC_L2 = 1
CHUNK_ROWS = 512  # rows per task: its FP32 copy stays in a core's cache for the 16 queries


@cache
def half_table() -> np.ndarray:
    """float32 value of every float16 bit pattern."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _decode(value, table):  # type: ignore[no-untyped-def]
    """A stored element as float32: float16 bit patterns through the table, float32 as it is."""


@overload(_decode, inline="always")
def _decode_impl(value, table):  # type: ignore[no-untyped-def]
    if isinstance(value, types.Integer):
        return lambda value, table: table[value]
    return lambda value, table: np.float32(value)


@numba.njit(inline="always", cache=True)
def _worse(key_a: float, id_a: int, key_b: float, id_b: int) -> bool:
    """(key_a, id_a) ranks after (key_b, id_b); empty slots (id -1) rank after everything."""
    if id_a < 0 or id_b < 0:
        return id_a < 0 and id_b >= 0
    return key_a > key_b or (key_a == key_b and id_a > id_b)


@numba.njit(inline="always", cache=True)
def _sift_down(keys: np.ndarray, ids: np.ndarray, pos: int, size: int) -> None:
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and _worse(keys[right], ids[right], keys[left], ids[left]):
            child = right
        if not _worse(keys[child], ids[child], keys[pos], ids[pos]):
            return
        keys[pos], keys[child] = keys[child], keys[pos]
        ids[pos], ids[child] = ids[child], ids[pos]
        pos = child


@numba.njit(parallel=True, cache=True, fastmath=True)
def _scan_tasks(
    queries: np.ndarray,  # (nq, d) float32
    qnorms: np.ndarray,  # (nq,) float32
    task_begin: np.ndarray,  # (ntasks,) int64
    task_end: np.ndarray,  # (ntasks,) int64
    task_query: np.ndarray,  # (ntasks * 16,) int64, -1 = unused slot
    task_out: np.ndarray,  # (ntasks * 16,) int32 candidate row, -1 = unused slot
    vectors: np.ndarray,  # (n, d) uint16 (raw float16 bits) or float32
    ids: np.ndarray,  # (n,) int64
    sqnorms: np.ndarray,  # (n,) float32
    allowed: np.ndarray,  # (n,) uint8, 0 = skip the row (deleted, or outside a filter); empty = all
    table: np.ndarray,  # (65536,) float32
    metric: int,
    out_keys: np.ndarray,  # (candidate rows, k) float32
    out_ids: np.ndarray,  # (candidate rows, k) int64
) -> None:
    d = queries.shape[1]
    k = out_keys.shape[1]
    masked = allowed.size > 0
    for task in numba.prange(task_begin.size):
        lo = task_begin[task]
        rows = task_end[task] - lo
        # Decode the row range once for all the task's queries: the FP16 -> FP32 cost is shared.
        block = np.empty((rows, d), dtype=np.float32)
        for r in range(rows):
            for j in range(d):
                block[r, j] = _decode(vectors[lo + r, j], table)
        for slot in range(TILE):
            q = task_query[task * TILE + slot]
            out = task_out[task * TILE + slot]
            if out < 0:
                continue
            keys = out_keys[out]
            best = out_ids[out]
            keys[:] = np.inf
            best[:] = -1
            query = queries[q]
            for r in range(rows):
                if masked and allowed[lo + r] == 0:
                    continue
                dot = np.float32(0.0)
                for j in range(d):
                    dot += query[j] * block[r, j]
                if metric == METRIC_L2:
                    key = max(qnorms[q] - np.float32(2.0) * dot + sqnorms[lo + r], np.float32(0.0))
                else:
                    key = -dot
                ident = ids[lo + r]
                # The heap root is the worst kept candidate; replace it when this one is better.
                if _worse(keys[0], best[0], key, ident):
                    keys[0] = key
                    best[0] = ident
                    _sift_down(keys, best, 0, k)


@numba.njit(parallel=True, cache=True)
def _merge_rows(
    by_query: np.ndarray,  # candidate rows ordered by query
    starts: np.ndarray,  # (nq + 1,) where each query's rows begin in by_query
    cand_keys: np.ndarray,  # (candidate rows, k)
    cand_ids: np.ndarray,
    keys: np.ndarray,  # (nq, k) out: best first
    found: np.ndarray,
) -> None:
    k = keys.shape[1]
    for q in numba.prange(keys.shape[0]):
        row_keys = keys[q]
        row_ids = found[q]
        row_keys[:] = np.inf
        row_ids[:] = -1
        for position in range(starts[q], starts[q + 1]):
            source = by_query[position]
            for j in range(k):
                ident = cand_ids[source, j]
                if ident >= 0 and _worse(row_keys[0], row_ids[0], cand_keys[source, j], ident):
                    row_keys[0] = cand_keys[source, j]
                    row_ids[0] = ident
                    _sift_down(row_keys, row_ids, 0, k)
        # Heap sort in place: the worst goes to the end, leaving the row best first.
        for end in range(k - 1, 0, -1):
            row_keys[0], row_keys[end] = row_keys[end], row_keys[0]
            row_ids[0], row_ids[end] = row_ids[end], row_ids[0]
            _sift_down(row_keys, row_ids, 0, end)


def scan_lists(
    queries: np.ndarray,
    probes: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    sqnorms: np.ndarray,
    offsets: np.ndarray,
    k: int,
    l2: bool,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best k (keys, ids) per query over its probed lists, best first; keys are distances for l2
    and negated inner products otherwise; missing neighbours are (inf, -1). Rows where `allowed`
    (uint8 per row) is 0 are skipped."""
    if vectors.dtype not in (np.float16, np.float32):
        raise TypeError(f"the Numba scan reads float16 or float32 vectors, got {vectors.dtype}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = queries.shape[0]
    tasks = plan_tasks(np.asarray(probes), np.asarray(offsets, dtype=np.int64), CHUNK_ROWS)
    out_keys = np.empty((tasks.candidate_rows, k), dtype=np.float32)
    out_ids = np.empty((tasks.candidate_rows, k), dtype=np.int64)
    if tasks.count:
        _scan_tasks(
            queries,
            (queries * queries).sum(axis=1) if l2 else np.zeros(nq, dtype=np.float32),
            tasks.begin,
            tasks.end,
            tasks.query,
            tasks.out_row,
            vectors.view(np.uint16) if vectors.dtype == np.float16 else vectors,
            np.ascontiguousarray(ids, dtype=np.int64),
            np.ascontiguousarray(sqnorms, dtype=np.float32),
            np.empty(0, np.uint8) if allowed is None else np.ascontiguousarray(allowed, dtype=np.uint8),
            half_table(),
            METRIC_L2 if l2 else METRIC_IP,
            out_keys,
            out_ids,
        )
    keys = np.empty((nq, k), dtype=np.float32)
    found = np.empty((nq, k), dtype=np.int64)
    by_query = np.argsort(tasks.row_query, kind="stable")
    starts = np.concatenate([[0], np.cumsum(tasks.rows_per_query)]).astype(np.int64)
    _merge_rows(by_query, starts, out_keys, out_ids, keys, found)
    return keys, found


def warm(storage: Iterable[tuple[Any, bool]] | None = None) -> list[str]:
    """Compile (or load from Numba's cache) the scan for each (storage dtype, writable) in `storage`
    (default: every one a search uses), so that the first search of a job is as fast as the next:
    `scripts/setup` warms them all once; opening an index, those of its segments. Returns what was warmed."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(2, 8)).astype(np.float32)
    offsets = np.array([0, 3, 6], dtype=np.int64)
    probes = np.array([[0, 1], [1, -1]], dtype=np.int64)
    ids = np.arange(6, dtype=np.int64)
    warmed = []
    # Numba compiles per argument type, and a read-only array is another type: shards on disk are
    # memory-mapped read-only, the deltas of updates are not.
    every = [(np.float16, False), (np.float16, True), (np.float32, False), (np.float32, True)]
    for dtype, writable in every if storage is None else sorted(storage, key=_storage_order):
        vectors = rng.normal(size=(6, 8)).astype(dtype)
        sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1)
        rows = [vectors, ids.copy(), sqnorms]
        for array in rows:
            array.setflags(write=writable)
        scan_lists(queries, probes, *rows, offsets, 2, l2=False)
        scan_lists(queries, probes, *rows, offsets, 2, l2=True, allowed=np.ones(6, np.uint8))
        warmed.append(f"{np.dtype(dtype).name} {'writable' if writable else 'read-only'}")
    return warmed


def _storage_order(storage: tuple[Any, bool]) -> tuple[str, bool]:
    return np.dtype(storage[0]).name, storage[1]
