"""Where a shard's graph walk starts: near the query, at a row the router already found.

An HNSW search descends the graph's upper levels from one fixed entry point to find where, on the
bottom level, to start its walk. The router has already placed each query: its probed lists, best
first. So a shard's walk starts on the bottom level at the row nearest the centroid of the query's
nearest probed list that the shard holds rows in, and skips the descent. This is faiss's own
`IndexHNSW.search_level_0`, the search faiss's IVF-over-HNSW indexes use with entry points from
a coarse quantizer.

Measured on the man-page set (one shard of four, the 900 queries it holds lists of, ef 10, one
thread): 34 ms instead of 42 ms, recall 0.926 against 0.928; on a shard the queries reach less
often, 8.9 ms instead of 10.7 and recall 0.900 instead of 0.872.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.metric import Metric

ENTRY_ROWS = 16_384  # rows whose distance to their list's centroid is computed at once


def graph_rows(index: Any) -> np.ndarray:
    """A faiss HNSW index's stored vectors as an (n, d) view, no copy: float32 (IndexHNSWFlat) or
    float16 (IndexHNSWSQ with fp16 storage, see `local_kinds.hnsw_graph`)."""
    import faiss

    storage = faiss.downcast_index(index.storage)
    if isinstance(storage, faiss.IndexScalarQuantizer):
        if storage.sq.qtype != faiss.ScalarQuantizer.QT_fp16:
            raise HpcragError(
                f"this hnsw graph codes its rows with faiss scalar quantizer type {storage.sq.qtype}, which "
                "hpcrag neither builds nor reads: rebuild the index with this hpcrag"
            )
        codes = faiss.rev_swig_ptr(storage.codes.data(), index.ntotal * storage.code_size)
        return codes.view(np.float16).reshape(index.ntotal, index.d)
    return faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def list_entries(rows: np.ndarray, offsets: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per list, the position of its row nearest (squared L2) its centroid; -1 for a list with no row.
    `rows` are stored grouped by list, as `offsets` (nlist + 1) says."""
    nlist = offsets.size - 1
    entries = np.full(nlist, -1, dtype=np.int32)
    counts = np.diff(offsets)
    lists = np.repeat(np.arange(nlist), counts)
    distances = np.empty(rows.shape[0], dtype=np.float32)
    for lo in range(0, rows.shape[0], ENTRY_ROWS):
        part = slice(lo, lo + ENTRY_ROWS)
        block = rows[part].astype(np.float32)
        # |r - c|^2 less |c|^2, which is the same for every row of a list
        distances[part] = np.einsum("nd,nd->n", block, block - 2.0 * centroids[lists[part]])
    # Sort by (list, distance): each list's first row in that order is its nearest to the centroid.
    order = np.lexsort((distances, lists))
    held = np.flatnonzero(counts)
    entries[held] = order[offsets[held]]
    return entries


def query_entries(probes: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """(nq, 1) int32: each query's entry row, from its first probe into a list with a row here
    (-1 where it has none: faiss then returns nothing for that query)."""
    valid = probes >= 0
    candidates = np.where(valid, entries[np.where(valid, probes, 0)], -1)
    first = (candidates >= 0).argmax(axis=1)
    return np.ascontiguousarray(candidates[np.arange(probes.shape[0]), first][:, None], dtype=np.int32)


def search_from_entries(
    index: Any, rows: np.ndarray, queries: np.ndarray, starts: np.ndarray, k: int, params: Any, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    """faiss's bottom-level HNSW search from one entry row per query: (scores, labels), best first."""
    import faiss

    nq = queries.shape[0]
    entry = rows[np.maximum(starts[:, 0], 0)].astype(np.float32)
    if metric is Metric.L2:
        start_scores = ((queries - entry) ** 2).sum(axis=1)
    else:
        start_scores = np.einsum("qd,qd->q", queries, entry)
        # faiss before 1.14.3 walked inner-product graphs on negated scores (no `is_similarity`).
        if not getattr(index.hnsw, "is_similarity", False):
            start_scores = -start_scores
    start_scores = np.ascontiguousarray(start_scores[:, None], dtype=np.float32)
    distances = np.empty((nq, k), dtype=np.float32)
    labels = np.empty((nq, k), dtype=np.int64)
    ptr = faiss.swig_ptr
    index.search_level_0(
        nq, ptr(queries), k, ptr(starts), ptr(start_scores), ptr(distances), ptr(labels), 1, 1, params
    )
    return distances, labels
